//! The gatherer: the Vulkan loader opened at run time and the few calls the probe needs,
//! declared by hand from the Vulkan specification (`vulkan_core.h`).
//!
//! Hand-written rather than `ash`: these dozen declarations compile in a fraction of a second,
//! `ash` takes about 12 s of release build on the project's machine. Every structure below is
//! `#[repr(C)]` with its field order from the spec and its size checked at compile time on
//! 64-bit targets against the sizes the spec's C header gives.

use super::{uuid_hex, MemoryHeap, VulkanError, VulkanFacts};
use libloading::Library;
use std::ffi::{c_char, c_void, CStr};
use std::mem::{offset_of, size_of};
use std::ptr;
use std::sync::OnceLock;

type VkResult = i32;
/// Dispatchable handles are pointers to loader-owned objects.
type VkInstance = *mut c_void;
type VkPhysicalDevice = *mut c_void;

const SUCCESS: VkResult = 0;
const INCOMPLETE: VkResult = 5;
const ERROR_INITIALIZATION_FAILED: VkResult = -3;
const ERROR_INCOMPATIBLE_DRIVER: VkResult = -9;

const VERSION_1_0: u32 = 1 << 22;
const VERSION_1_1: u32 = (1 << 22) | (1 << 12);
const VERSION_1_2: u32 = (1 << 22) | (2 << 12);
/// The top three bits of a version are the variant, 0 for Vulkan proper.
const VERSION_MASK: u32 = 0x1FFF_FFFF;

const STRUCTURE_TYPE_APPLICATION_INFO: u32 = 0;
const STRUCTURE_TYPE_INSTANCE_CREATE_INFO: u32 = 1;
const STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2: u32 = 1_000_059_000;
const STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2: u32 = 1_000_059_001;
const STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES: u32 = 1_000_071_004;
const STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES: u32 = 1_000_082_000;
const STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES: u32 = 1_000_083_000;
const STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES: u32 = 1_000_196_000;

const INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT: u32 = 0x1;
const MEMORY_HEAP_DEVICE_LOCAL_BIT: u32 = 0x1;
const MAX_MEMORY_TYPES: usize = 32;
const MAX_MEMORY_HEAPS: usize = 16;
const MAX_NAME_SIZE: usize = 256;

/// More devices than any machine has; bounds what a confused driver can make us allocate.
const MAX_DEVICES: u32 = 64;
const MAX_EXTENSIONS: u32 = 4096;

const PORTABILITY_ENUMERATION: &CStr = c"VK_KHR_portability_enumeration";
const DRIVER_PROPERTIES: &CStr = c"VK_KHR_driver_properties";
const SHADER_FLOAT16_INT8: &CStr = c"VK_KHR_shader_float16_int8";

#[cfg(windows)]
const LIBRARY_NAMES: &[&str] = &["vulkan-1.dll"];
#[cfg(target_vendor = "apple")]
const LIBRARY_NAMES: &[&str] = &[
    "libvulkan.1.dylib",
    "libvulkan.dylib",
    // MoltenVK alone, for machines with the ICD but without the Khronos loader.
    "libMoltenVK.dylib",
];
// Desktop Linux ships the versioned name; Android only `libvulkan.so`.
#[cfg(not(any(windows, target_vendor = "apple")))]
const LIBRARY_NAMES: &[&str] = &["libvulkan.so.1", "libvulkan.so"];

type PfnVoid = Option<unsafe extern "system" fn()>;
type GetInstanceProcAddr = unsafe extern "system" fn(VkInstance, *const c_char) -> PfnVoid;
type EnumerateInstanceVersion = unsafe extern "system" fn(*mut u32) -> VkResult;
type EnumerateInstanceExtensionProperties =
    unsafe extern "system" fn(*const c_char, *mut u32, *mut ExtensionProperties) -> VkResult;
type CreateInstance = unsafe extern "system" fn(
    *const InstanceCreateInfo,
    *const c_void,
    *mut VkInstance,
) -> VkResult;
type DestroyInstance = unsafe extern "system" fn(VkInstance, *const c_void);
type EnumeratePhysicalDevices =
    unsafe extern "system" fn(VkInstance, *mut u32, *mut VkPhysicalDevice) -> VkResult;
type EnumerateDeviceExtensionProperties = unsafe extern "system" fn(
    VkPhysicalDevice,
    *const c_char,
    *mut u32,
    *mut ExtensionProperties,
) -> VkResult;
type GetPhysicalDeviceProperties =
    unsafe extern "system" fn(VkPhysicalDevice, *mut PhysicalDeviceProperties);
type GetPhysicalDeviceMemoryProperties =
    unsafe extern "system" fn(VkPhysicalDevice, *mut PhysicalDeviceMemoryProperties);
type GetPhysicalDeviceProperties2 =
    unsafe extern "system" fn(VkPhysicalDevice, *mut PhysicalDeviceProperties2);
type GetPhysicalDeviceFeatures2 =
    unsafe extern "system" fn(VkPhysicalDevice, *mut PhysicalDeviceFeatures2);

/// Types whose every field is an integer, a float, a raw pointer or an array of them, so that
/// all-zero bytes are a valid value.
///
/// # Safety
/// Only implement for `#[repr(C)]` structs made of such fields.
unsafe trait Plain: Sized {}

fn zeroed<T: Plain>() -> T {
    // SAFETY: `Plain` types are valid when all-zero (see the trait).
    unsafe { std::mem::zeroed() }
}

#[repr(C)]
struct ApplicationInfo {
    s_type: u32,
    p_next: *const c_void,
    p_application_name: *const c_char,
    application_version: u32,
    p_engine_name: *const c_char,
    engine_version: u32,
    api_version: u32,
}

#[repr(C)]
struct InstanceCreateInfo {
    s_type: u32,
    p_next: *const c_void,
    flags: u32,
    p_application_info: *const ApplicationInfo,
    enabled_layer_count: u32,
    pp_enabled_layer_names: *const *const c_char,
    enabled_extension_count: u32,
    pp_enabled_extension_names: *const *const c_char,
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct ExtensionProperties {
    extension_name: [c_char; MAX_NAME_SIZE],
    spec_version: u32,
}

/// `VkPhysicalDeviceLimits`, never read: runs of consecutive 4-byte fields (`uint32_t`,
/// `int32_t`, `float`, `VkBool32`, `VkSampleCountFlags` and their arrays) are kept as `u32`
/// arrays of the same length, which has the same layout.
// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct PhysicalDeviceLimits {
    /// maxImageDimension1D ..= maxSamplerAllocationCount.
    words_a: [u32; 11],
    buffer_image_granularity: u64,
    sparse_address_space_size: u64,
    /// maxBoundDescriptorSets ..= viewportSubPixelBits (53 fields, four of them arrays).
    words_b: [u32; 59],
    min_memory_map_alignment: usize,
    min_texel_buffer_offset_alignment: u64,
    min_uniform_buffer_offset_alignment: u64,
    min_storage_buffer_offset_alignment: u64,
    /// minTexelOffset ..= standardSampleLocations (33 fields, two of them `float[2]`).
    words_c: [u32; 35],
    optimal_buffer_copy_offset_alignment: u64,
    optimal_buffer_copy_row_pitch_alignment: u64,
    non_coherent_atom_size: u64,
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct PhysicalDeviceProperties {
    api_version: u32,
    driver_version: u32,
    vendor_id: u32,
    device_id: u32,
    device_type: u32,
    device_name: [c_char; MAX_NAME_SIZE],
    pipeline_cache_uuid: [u8; 16],
    limits: PhysicalDeviceLimits,
    /// `VkPhysicalDeviceSparseProperties`: five `VkBool32`.
    sparse_properties: [u32; 5],
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct MemoryType {
    property_flags: u32,
    heap_index: u32,
}

#[repr(C)]
struct RawMemoryHeap {
    size: u64,
    flags: u32,
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct PhysicalDeviceMemoryProperties {
    memory_type_count: u32,
    memory_types: [MemoryType; MAX_MEMORY_TYPES],
    memory_heap_count: u32,
    memory_heaps: [RawMemoryHeap; MAX_MEMORY_HEAPS],
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct PhysicalDeviceProperties2 {
    s_type: u32,
    p_next: *mut c_void,
    properties: PhysicalDeviceProperties,
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct PhysicalDeviceIdProperties {
    s_type: u32,
    p_next: *mut c_void,
    device_uuid: [u8; 16],
    driver_uuid: [u8; 16],
    device_luid: [u8; 8],
    device_node_mask: u32,
    device_luid_valid: u32,
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct PhysicalDeviceDriverProperties {
    s_type: u32,
    p_next: *mut c_void,
    driver_id: u32,
    driver_name: [c_char; MAX_NAME_SIZE],
    driver_info: [c_char; MAX_NAME_SIZE],
    /// `VkConformanceVersion`: four `uint8_t`.
    conformance_version: [u8; 4],
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct PhysicalDeviceFeatures2 {
    s_type: u32,
    p_next: *mut c_void,
    /// `VkPhysicalDeviceFeatures`: 55 `VkBool32`, never read.
    features: [u32; 55],
}

#[repr(C)]
struct PhysicalDeviceShaderFloat16Int8Features {
    s_type: u32,
    p_next: *mut c_void,
    shader_float16: u32,
    shader_int8: u32,
}

// The driver writes every field; only some are read.
#[allow(dead_code)]
#[repr(C)]
struct PhysicalDevice16BitStorageFeatures {
    s_type: u32,
    p_next: *mut c_void,
    storage_buffer_16bit_access: u32,
    uniform_and_storage_buffer_16bit_access: u32,
    storage_push_constant16: u32,
    storage_input_output16: u32,
}

// SAFETY: each is a `#[repr(C)]` struct of integers, floats kept as `u32`, raw pointers and
// arrays of those.
unsafe impl Plain for ExtensionProperties {}
unsafe impl Plain for PhysicalDeviceProperties {}
unsafe impl Plain for PhysicalDeviceMemoryProperties {}
unsafe impl Plain for PhysicalDeviceProperties2 {}
unsafe impl Plain for PhysicalDeviceIdProperties {}
unsafe impl Plain for PhysicalDeviceDriverProperties {}
unsafe impl Plain for PhysicalDeviceFeatures2 {}
unsafe impl Plain for PhysicalDeviceShaderFloat16Int8Features {}
unsafe impl Plain for PhysicalDevice16BitStorageFeatures {}

// Sizes and offsets of `vulkan_core.h` on LP64/LLP64 targets.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<ApplicationInfo>() == 48);
    assert!(size_of::<InstanceCreateInfo>() == 64);
    assert!(size_of::<ExtensionProperties>() == 260);
    assert!(size_of::<PhysicalDeviceLimits>() == 504);
    assert!(offset_of!(PhysicalDeviceLimits, min_memory_map_alignment) == 304);
    assert!(offset_of!(PhysicalDeviceLimits, optimal_buffer_copy_offset_alignment) == 480);
    assert!(offset_of!(PhysicalDeviceProperties, device_name) == 20);
    assert!(offset_of!(PhysicalDeviceProperties, limits) == 296);
    assert!(size_of::<PhysicalDeviceProperties>() == 824);
    assert!(size_of::<MemoryType>() == 8);
    assert!(size_of::<RawMemoryHeap>() == 16);
    assert!(offset_of!(PhysicalDeviceMemoryProperties, memory_heaps) == 264);
    assert!(size_of::<PhysicalDeviceMemoryProperties>() == 520);
    assert!(size_of::<PhysicalDeviceProperties2>() == 840);
    assert!(size_of::<PhysicalDeviceIdProperties>() == 64);
    assert!(size_of::<PhysicalDeviceDriverProperties>() == 536);
    assert!(size_of::<PhysicalDeviceFeatures2>() == 240);
    assert!(size_of::<PhysicalDeviceShaderFloat16Int8Features>() == 24);
    assert!(size_of::<PhysicalDevice16BitStorageFeatures>() == 32);
};

/// The loader library and its one exported entry point; everything else comes through
/// `vkGetInstanceProcAddr`, as the loader interface prescribes.
struct Loader {
    library: Library,
    name: &'static str,
    get_instance_proc_addr: GetInstanceProcAddr,
}

/// Loaded once and never unloaded: the loader's drivers (LLVM in lavapipe among them) register
/// exit handlers and thread-local destructors that crash if their library is gone, and a
/// second probe should not pay for loading again.
static LOADER: OnceLock<Option<Result<Loader, VulkanError>>> = OnceLock::new();

fn loader() -> Option<&'static Result<Loader, VulkanError>> {
    LOADER.get_or_init(open_loader).as_ref()
}

fn open_loader() -> Option<Result<Loader, VulkanError>> {
    let (name, library) = LIBRARY_NAMES.iter().find_map(|&name| {
        // SAFETY: loading runs the library's initialisers; the Vulkan loader's only set up its
        // own state and do not depend on anything of ours.
        unsafe { Library::new(name) }.ok().map(|lib| (name, lib))
    })?;
    // SAFETY: `vkGetInstanceProcAddr` is the loader's exported entry point and has this
    // signature in every Vulkan version.
    let symbol = unsafe { library.get::<GetInstanceProcAddr>(b"vkGetInstanceProcAddr\0") };
    Some(match symbol {
        Ok(f) => Ok(Loader {
            get_instance_proc_addr: *f,
            name,
            library,
        }),
        Err(_) => Err(VulkanError::NoEntryPoint {
            library: name.to_string(),
        }),
    })
}

/// Looks up a Vulkan function through `vkGetInstanceProcAddr` and gives it its spec signature.
macro_rules! proc_addr {
    ($loader:expr, $instance:expr, $name:literal as $ty:ty) => {{
        // SAFETY: `$name` is a NUL-terminated string and `$instance` null or a live instance,
        // which is all vkGetInstanceProcAddr asks.
        let f = unsafe { ($loader.get_instance_proc_addr)($instance, $name.as_ptr()) };
        // SAFETY: the function the loader returns for `$name` has the C signature that `$ty`
        // transcribes from the spec.
        f.map(|f| unsafe { std::mem::transmute::<unsafe extern "system" fn(), $ty>(f) })
    }};
}

/// Destroys the instance when it goes out of scope, on every return path.
struct Instance {
    handle: VkInstance,
    destroy: DestroyInstance,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: `handle` came from a successful vkCreateInstance, is destroyed only here,
        // and no object created from it outlives this guard.
        unsafe { (self.destroy)(self.handle, ptr::null()) }
    }
}

pub(super) fn gather() -> Result<Vec<VulkanFacts>, VulkanError> {
    match loader() {
        None => Ok(Vec::new()),
        Some(Err(e)) => Err(e.clone()),
        Some(Ok(loader)) => gather_with(loader),
    }
}

fn gather_with(loader: &Loader) -> Result<Vec<VulkanFacts>, VulkanError> {
    let Some(instance) = create_instance(loader)? else {
        return Ok(Vec::new());
    };
    let instance_version = instance_version(loader);
    let handle = instance.handle;
    let enumerate = proc_addr!(
        loader,
        handle,
        c"vkEnumeratePhysicalDevices" as EnumeratePhysicalDevices
    )
    .ok_or(VulkanError::MissingFunction("vkEnumeratePhysicalDevices"))?;
    let properties = proc_addr!(
        loader,
        handle,
        c"vkGetPhysicalDeviceProperties" as GetPhysicalDeviceProperties
    )
    .ok_or(VulkanError::MissingFunction(
        "vkGetPhysicalDeviceProperties",
    ))?;
    let memory = proc_addr!(
        loader,
        handle,
        c"vkGetPhysicalDeviceMemoryProperties" as GetPhysicalDeviceMemoryProperties
    )
    .ok_or(VulkanError::MissingFunction(
        "vkGetPhysicalDeviceMemoryProperties",
    ))?;
    // Core in 1.1: the loader hands them out only to an instance created for 1.1 or later.
    let calls = Calls {
        properties,
        memory,
        properties2: proc_addr!(
            loader,
            handle,
            c"vkGetPhysicalDeviceProperties2" as GetPhysicalDeviceProperties2
        ),
        features2: proc_addr!(
            loader,
            handle,
            c"vkGetPhysicalDeviceFeatures2" as GetPhysicalDeviceFeatures2
        ),
        extensions: proc_addr!(
            loader,
            handle,
            c"vkEnumerateDeviceExtensionProperties" as EnumerateDeviceExtensionProperties
        ),
    };

    let mut count = 0u32;
    // SAFETY: a live instance and a valid count pointer; a null array asks for the count only.
    let r = unsafe { enumerate(handle, &mut count, ptr::null_mut()) };
    match r {
        SUCCESS => {}
        // Older loaders answer this when no driver is installed: the platform is absent.
        ERROR_INITIALIZATION_FAILED => return Ok(Vec::new()),
        code => {
            return Err(VulkanError::Call {
                call: "vkEnumeratePhysicalDevices",
                code,
            })
        }
    }
    let mut count = count.min(MAX_DEVICES);
    let mut devices = vec![ptr::null_mut(); count as usize];
    // SAFETY: `devices` has room for `count` handles; the driver writes at most `count` and
    // updates it to the number written.
    let r = unsafe { enumerate(handle, &mut count, devices.as_mut_ptr()) };
    if r != SUCCESS && r != INCOMPLETE {
        return Err(VulkanError::Call {
            call: "vkEnumeratePhysicalDevices",
            code: r,
        });
    }
    devices.truncate(count as usize);
    let facts = devices
        .iter()
        .filter(|d| !d.is_null())
        .map(|&d| device_facts(&calls, d, instance_version))
        .collect();
    drop(instance);
    Ok(facts)
}

struct Calls {
    properties: GetPhysicalDeviceProperties,
    memory: GetPhysicalDeviceMemoryProperties,
    properties2: Option<GetPhysicalDeviceProperties2>,
    features2: Option<GetPhysicalDeviceFeatures2>,
    extensions: Option<EnumerateDeviceExtensionProperties>,
}

/// `vkEnumerateInstanceVersion`, absent from 1.0 loaders.
fn instance_version(loader: &Loader) -> u32 {
    let Some(f) = proc_addr!(
        loader,
        ptr::null_mut(),
        c"vkEnumerateInstanceVersion" as EnumerateInstanceVersion
    ) else {
        return VERSION_1_0;
    };
    let mut version = 0u32;
    // SAFETY: a valid pointer to a u32 is the only argument.
    match unsafe { f(&mut version) } {
        SUCCESS => version & VERSION_MASK,
        _ => VERSION_1_0,
    }
}

/// `None` when the loader has no driver to create an instance with.
fn create_instance(loader: &Loader) -> Result<Option<Instance>, VulkanError> {
    let create = proc_addr!(
        loader,
        ptr::null_mut(),
        c"vkCreateInstance" as CreateInstance
    )
    .ok_or(VulkanError::MissingFunction("vkCreateInstance"))?;
    let version = instance_version(loader);
    // macOS's loader lists MoltenVK only to instances that enable portability enumeration.
    let portability = instance_has_extension(loader, PORTABILITY_ENUMERATION);
    let extensions = [PORTABILITY_ENUMERATION.as_ptr()];
    let app = ApplicationInfo {
        s_type: STRUCTURE_TYPE_APPLICATION_INFO,
        p_next: ptr::null(),
        p_application_name: c"hearth".as_ptr(),
        application_version: 0,
        p_engine_name: c"hearth".as_ptr(),
        engine_version: 0,
        // A 1.0 implementation refuses any other apiVersion; 1.1 and later accept any.
        api_version: if version >= VERSION_1_1 {
            version
        } else {
            VERSION_1_0
        },
    };
    let info = InstanceCreateInfo {
        s_type: STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        p_next: ptr::null(),
        flags: if portability {
            INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT
        } else {
            0
        },
        p_application_info: &app,
        enabled_layer_count: 0,
        pp_enabled_layer_names: ptr::null(),
        enabled_extension_count: u32::from(portability),
        pp_enabled_extension_names: extensions.as_ptr(),
    };
    let mut handle: VkInstance = ptr::null_mut();
    // SAFETY: `info`, `app` and the strings they point to outlive the call; no allocator.
    let r = unsafe { create(&info, ptr::null(), &mut handle) };
    match r {
        SUCCESS if !handle.is_null() => {}
        SUCCESS => {
            return Err(VulkanError::Call {
                call: "vkCreateInstance (null handle)",
                code: r,
            })
        }
        ERROR_INCOMPATIBLE_DRIVER => return Ok(None),
        code => {
            return Err(VulkanError::Call {
                call: "vkCreateInstance",
                code,
            })
        }
    }
    let destroy =
        proc_addr!(loader, handle, c"vkDestroyInstance" as DestroyInstance).or_else(|| {
            // SAFETY: the loader exports every Vulkan 1.0 command with its spec signature.
            unsafe {
                loader
                    .library
                    .get::<DestroyInstance>(b"vkDestroyInstance\0")
            }
            .ok()
            .map(|f| *f)
        });
    match destroy {
        Some(destroy) => Ok(Some(Instance { handle, destroy })),
        // Without vkDestroyInstance the instance cannot be freed; it is leaked once.
        None => Err(VulkanError::MissingFunction("vkDestroyInstance")),
    }
}

fn instance_has_extension(loader: &Loader, name: &CStr) -> bool {
    let Some(f) = proc_addr!(
        loader,
        ptr::null_mut(),
        c"vkEnumerateInstanceExtensionProperties" as EnumerateInstanceExtensionProperties
    ) else {
        return false;
    };
    // SAFETY: a null layer name; `count` and `out` follow the two-call idiom below.
    list_extensions(|count, out| unsafe { f(ptr::null(), count, out) })
        .iter()
        .any(|e| e.is(name))
}

/// The two-call idiom of `vkEnumerate*ExtensionProperties`: count, then fill. An error or an
/// answer that keeps growing gives an empty list, as if the extensions were absent.
fn list_extensions(call: impl Fn(*mut u32, *mut ExtensionProperties) -> VkResult) -> Vec<CName> {
    for _ in 0..3 {
        let mut count = 0u32;
        if call(&mut count, ptr::null_mut()) != SUCCESS {
            return Vec::new();
        }
        let mut count = count.min(MAX_EXTENSIONS);
        let mut list: Vec<ExtensionProperties> = (0..count).map(|_| zeroed()).collect();
        match call(&mut count, list.as_mut_ptr()) {
            SUCCESS => {
                list.truncate(count as usize);
                return list.iter().map(|e| CName::new(&e.extension_name)).collect();
            }
            // The list grew between the calls (a driver was added); ask again.
            INCOMPLETE => continue,
            _ => return Vec::new(),
        }
    }
    Vec::new()
}

/// A fixed-size C string from a driver, cut at the first NUL or at its end, so a missing
/// terminator cannot make us read past the array.
#[derive(Debug, PartialEq, Eq)]
struct CName(Vec<u8>);

impl CName {
    fn new(chars: &[c_char]) -> CName {
        // `c_char` is i8 or u8 by platform; the cast reinterprets the byte either way.
        CName(
            chars
                .iter()
                .map(|&c| c as u8)
                .take_while(|&b| b != 0)
                .collect(),
        )
    }

    fn is(&self, name: &CStr) -> bool {
        self.0 == name.to_bytes()
    }

    fn into_string(self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

fn device_facts(calls: &Calls, device: VkPhysicalDevice, instance_version: u32) -> VulkanFacts {
    let mut props: PhysicalDeviceProperties = zeroed();
    // SAFETY: `device` came from vkEnumeratePhysicalDevices on a live instance; `props` is a
    // writable struct of the spec's layout.
    unsafe { (calls.properties)(device, &mut props) };
    let mut mem: PhysicalDeviceMemoryProperties = zeroed();
    // SAFETY: as above, for the memory properties.
    unsafe { (calls.memory)(device, &mut mem) };
    let heap_count = (mem.memory_heap_count as usize).min(MAX_MEMORY_HEAPS);
    let memory_heaps = mem.memory_heaps[..heap_count]
        .iter()
        .map(|h| MemoryHeap {
            size_bytes: h.size,
            device_local: h.flags & MEMORY_HEAP_DEVICE_LOCAL_BIT != 0,
        })
        .collect();
    let api_version = props.api_version & VERSION_MASK;
    let mut facts = VulkanFacts {
        instance_version,
        api_version,
        driver_version: props.driver_version,
        vendor_id: props.vendor_id,
        device_id: props.device_id,
        device_type: props.device_type,
        device_name: CName::new(&props.device_name).into_string(),
        device_uuid: None,
        driver_name: None,
        driver_info: None,
        memory_heaps,
        shader_float16: false,
        shader_int8: false,
        storage_buffer_16bit: false,
    };
    // The *2 queries and the structures chained to them are core in 1.1, for instance and
    // device alike; a 1.0 device gets only what 1.0 can say.
    if instance_version < VERSION_1_1 || api_version < VERSION_1_1 {
        return facts;
    }
    let extensions = match calls.extensions {
        // SAFETY: a device of a live instance and a null layer name; `count` and `out` follow
        // the two-call idiom.
        Some(f) => list_extensions(|count, out| unsafe { f(device, ptr::null(), count, out) }),
        None => Vec::new(),
    };
    let has = |name: &CStr| extensions.iter().any(|e| e.is(name));
    // Chaining a structure the device does not know is invalid usage, so each is chained only
    // where its version or extension is there.
    let driver_properties = api_version >= VERSION_1_2 || has(DRIVER_PROPERTIES);
    let float16_int8 = api_version >= VERSION_1_2 || has(SHADER_FLOAT16_INT8);

    if let Some(properties2) = calls.properties2 {
        let mut driver: PhysicalDeviceDriverProperties = zeroed();
        driver.s_type = STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES;
        let mut id: PhysicalDeviceIdProperties = zeroed();
        id.s_type = STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES;
        if driver_properties {
            id.p_next = ptr::addr_of_mut!(driver).cast();
        }
        let mut props2: PhysicalDeviceProperties2 = zeroed();
        props2.s_type = STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2;
        props2.p_next = ptr::addr_of_mut!(id).cast();
        // SAFETY: every structure in the chain is live, of the spec's layout, with its sType
        // set, and supported by the device (checked above).
        unsafe { properties2(device, &mut props2) };
        facts.device_uuid = Some(uuid_hex(&id.device_uuid));
        if driver_properties {
            facts.driver_name = Some(CName::new(&driver.driver_name).into_string());
            facts.driver_info = Some(CName::new(&driver.driver_info).into_string());
        }
    }
    if let Some(features2) = calls.features2 {
        let mut f16: PhysicalDeviceShaderFloat16Int8Features = zeroed();
        f16.s_type = STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES;
        let mut storage: PhysicalDevice16BitStorageFeatures = zeroed();
        storage.s_type = STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES;
        if float16_int8 {
            storage.p_next = ptr::addr_of_mut!(f16).cast();
        }
        let mut features: PhysicalDeviceFeatures2 = zeroed();
        features.s_type = STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
        features.p_next = ptr::addr_of_mut!(storage).cast();
        // SAFETY: as for the properties chain above.
        unsafe { features2(device, &mut features) };
        facts.storage_buffer_16bit = storage.storage_buffer_16bit_access != 0;
        facts.shader_float16 = f16.shader_float16 != 0;
        facts.shader_int8 = f16.shader_int8 != 0;
    }
    facts
}

/// Which library the loader was opened from, for messages; `None` without one.
pub(super) fn loader_library() -> Option<&'static str> {
    match loader() {
        Some(Ok(l)) => Some(l.name),
        _ => None,
    }
}
