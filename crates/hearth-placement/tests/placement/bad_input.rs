//! Bad fleets, profiles and policies fail with errors that name the field or the shortfall.

use crate::common::*;
use hearth_placement::{plan, Fleet, FleetError, PlanError, Policy};

const FLEET: &str = r#"
[[device]]
name = "gpu"
backend = "cuda"
memory_gib = 4.0
bandwidth_gbs = 500.0
tflops = 20.0
precisions = ["f32", "f16"]

[[device]]
name = "cpu"
backend = "cpu"
memory_gib = 2.0
bandwidth_gbs = 50.0
tflops = 1.0
precisions = ["f32"]

[[link]]
a = "gpu"
b = "cpu"
latency_ms = 1.0
bandwidth_gbps = 1.0
"#;

fn err(text: &str) -> String {
    Fleet::from_toml(text).unwrap_err().to_string()
}

#[test]
fn unknown_device_in_a_link() {
    let e = err(&FLEET.replace("b = \"cpu\"", "b = \"nas\""));
    assert!(
        e.contains("link #0") && e.contains("`b`") && e.contains("nas"),
        "{e}"
    );
}

#[test]
fn negative_or_zero_figures() {
    for (from, to, field) in [
        ("memory_gib = 4.0", "memory_gib = 0.0", "memory_gib"),
        (
            "bandwidth_gbs = 500.0",
            "bandwidth_gbs = -5.0",
            "bandwidth_gbs",
        ),
        ("tflops = 20.0", "tflops = 0", "tflops"),
        ("latency_ms = 1.0", "latency_ms = -1.0", "latency_ms"),
        (
            "bandwidth_gbps = 1.0",
            "bandwidth_gbps = 0.0",
            "bandwidth_gbps",
        ),
    ] {
        let e = err(&FLEET.replace(from, to));
        assert!(e.contains(field), "{field}: {e}");
    }
    let e = err(&FLEET.replace(
        "precisions = [\"f32\"]",
        "precisions = [\"f32\"]\nthermal_headroom = 0.0",
    ));
    assert!(
        e.contains("device `cpu`") && e.contains("thermal_headroom"),
        "{e}"
    );
}

#[test]
fn duplicate_names_and_links() {
    let e = err(&FLEET.replace("name = \"cpu\"", "name = \"gpu\""));
    assert!(e.contains("`gpu`") && e.contains("more than once"), "{e}");
    let dup = format!(
        "{FLEET}\n[[link]]\na = \"cpu\"\nb = \"gpu\"\nlatency_ms = 1.0\nbandwidth_gbps = 1.0\n"
    );
    assert!(matches!(
        Fleet::from_toml(&dup),
        Err(FleetError::DuplicateLink { .. })
    ));
}

#[test]
fn unknown_fields_and_types_are_named() {
    let e = err(&FLEET.replace("tflops = 20.0", "tflops = 20.0\nturbo = true"));
    assert!(e.contains("turbo"), "{e}");
    let e = err(&FLEET.replace("\"f32\", \"f16\"", "\"f32\", \"fp8\""));
    assert!(e.contains("fp8"), "{e}");
    let e = err(&FLEET.replace("tflops = 20.0", "tflops = \"fast\""));
    assert!(e.contains("tflops"), "{e}");
}

#[test]
fn a_model_that_fits_nowhere_reports_the_shortfall() {
    let f = Fleet::from_toml(FLEET).unwrap();
    let mut rng = Rng::new(7);
    let mut m = random_model(&mut rng, 8);
    m.layer_bytes = vec![1 << 30; 8];
    m.layer_params = vec![1 << 20; 8];
    let e = plan(&f, &m, &Policy::default()).unwrap_err();
    let PlanError::DoesNotFit {
        needed, available, ..
    } = &e
    else {
        panic!("{e}")
    };
    assert!(needed > available);
    let msg = e.to_string();
    assert!(msg.contains("short") && msg.contains("GiB"), "{msg}");
}

#[test]
fn policy_exclusions_are_reported() {
    let text = FLEET.replace(
        "precisions = [\"f32\"]",
        "precisions = [\"f32\"]\non_battery = true",
    );
    let f = Fleet::from_toml(&text).unwrap();
    let mut rng = Rng::new(3);
    let mut m = random_model(&mut rng, 8);
    m.layer_bytes = vec![100 << 20; 8];
    m.layer_params = vec![1 << 20; 8];
    let got = plan(&f, &m, &Policy::default()).unwrap();
    assert_eq!(got.unused.len(), 1);
    assert_eq!(got.unused[0].reason, "on battery");
    // Unsupported tensor types make every device unusable, with the type named.
    m.tensor_types.push("IQ2_XS".into());
    let e = plan(&f, &m, &Policy::default()).unwrap_err().to_string();
    assert!(e.contains("IQ2_XS"), "{e}");
    // An empty profile is refused by field.
    m.layer_bytes.clear();
    let e = plan(&f, &m, &Policy::default()).unwrap_err().to_string();
    assert!(e.contains("layer_bytes"), "{e}");
}

#[test]
fn memory_without_a_chain_is_explained() {
    let text = FLEET.split("[[link]]").next().unwrap().to_string();
    let f = Fleet::from_toml(&text).unwrap();
    let mut rng = Rng::new(5);
    let mut m = random_model(&mut rng, 8);
    m.layer_bytes = vec![600 << 20; 8];
    m.layer_params = vec![1 << 20; 8];
    m.embedding_bytes = 1 << 20;
    m.head_bytes = 1 << 20;
    let e = plan(&f, &m, &Policy::default()).unwrap_err();
    assert!(matches!(e, PlanError::NoChain { .. }), "{e}");
    assert!(e.to_string().contains("short"), "{e}");
}
