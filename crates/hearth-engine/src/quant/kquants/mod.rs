use super::*; pub(super) fn weight_kernel(_t: GgmlType, _isa: Isa) -> Option<WeightKernel> { None }
