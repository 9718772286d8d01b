//! Declared device profiles: parsing with typed errors, the derived compute share, and the
//! simulated thermal stand-in judged by the governor.

use hearth_device::{DeviceProfile, Measurement, ProfileError, ThermalStandIn};

const PHONE: &str = r#"
name = "phone"
backend = "vulkan"
memory_gib = 6.0
bandwidth_gbs = 40.0
tflops = 2.0
precisions = ["f32", "f16"]
on_battery = true

[thermal]
idle_temp_c = 35.0
heat_rate = 2.0
cool_rate = 0.02
threshold_c = 70.0
"#;

fn measured(bandwidth_gbs: f64) -> Measurement {
    Measurement {
        bandwidth_gbs,
        read_baseline_gbs: bandwidth_gbs * 1.2,
        tflops: 0.3,
        threads: 2,
        measured_at: 0,
    }
}

#[test]
fn a_profile_parses_with_defaults_and_derives_its_share_from_measured_bandwidth() {
    let p = DeviceProfile::from_toml(PHONE).unwrap();
    assert_eq!(p.memory_bytes(), 6 << 30);
    assert_eq!(p.thermal_headroom, 1.0);
    assert!(p.on_battery);
    assert_eq!(p.compute_share(Some(&measured(80.0))), Some(0.5));
    // Never faster than the machine under it.
    assert_eq!(p.compute_share(Some(&measured(20.0))), Some(1.0));
    assert_eq!(p.compute_share(None), None);
    let explicit = DeviceProfile::from_toml(&format!("compute_share = 0.25\n{PHONE}")).unwrap();
    assert_eq!(explicit.compute_share(Some(&measured(80.0))), Some(0.25));
}

#[test]
fn bad_profiles_name_the_field() {
    let cases: [(&str, &str); 8] = [
        ("memory_gib = 6.0", "memory_gib = -1.0"),
        ("memory_gib = 6.0", "memory_gib = nan"),
        ("backend = \"vulkan\"", "backend = \"tpu\""),
        ("[\"f32\", \"f16\"]", "[\"f32\", \"fp8\"]"),
        ("name = \"phone\"", "name = \" \""),
        ("threshold_c = 70.0", "threshold_c = 30.0"),
        ("cool_rate = 0.02", "cool_rate = 0.0"),
        ("on_battery = true", "on_battery = true\nfan = 3"),
    ];
    for (from, to) in cases {
        let text = PHONE.replacen(from, to, 1);
        let err = DeviceProfile::from_toml(&text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("device profile"), "{to}: {msg}");
        match err {
            ProfileError::BadValue { field, .. } => assert!(
                to.contains(field.trim_start_matches("thermal.")),
                "{to}: {field}"
            ),
            ProfileError::UnknownBackend(_)
            | ProfileError::UnknownPrecision(_)
            | ProfileError::EmptyName
            | ProfileError::Syntax(_) => {}
            ProfileError::Read { .. } => panic!("{to}: {msg}"),
        }
    }
    assert!(matches!(
        DeviceProfile::load(std::path::Path::new("/nonexistent/phone.toml")),
        Err(ProfileError::Read { .. })
    ));
}

#[test]
fn a_hot_stand_in_crosses_its_threshold_under_load_and_the_governor_sees_it_coming() {
    let p = DeviceProfile::from_toml(PHONE).unwrap();
    let thermal = p.thermal.as_ref().unwrap();
    // Full load settles at 35 + 2/0.02 = 135 °C: far past the 70 °C threshold.
    let mut sim = ThermalStandIn::new(thermal).unwrap();
    let mut first_over = None;
    let mut headroom_before = None;
    for second in 1..=120 {
        let r = sim.step(1.0, 1.0, true, Some(0.8)).unwrap();
        if r.over_threshold && first_over.is_none() {
            first_over = Some(second);
        }
        if first_over.is_none() {
            headroom_before = Some(r.decision.thermal_headroom);
        }
    }
    let over = first_over.expect("a device heading for 135 °C crosses 70 °C");
    assert!((15..=25).contains(&over), "crossed after {over} s");
    assert!(
        headroom_before.unwrap() < 1.0,
        "the governor saw the heat coming"
    );
    // Idle, it cools back below the threshold.
    let mut r = sim.step(0.0, 1.0, true, Some(0.8)).unwrap();
    for _ in 0..120 {
        r = sim.step(0.0, 1.0, true, Some(0.8)).unwrap();
    }
    assert!(!r.over_threshold && r.temp_c < 70.0, "{r:?}");
    // Nonsense input is absorbed, never a panic.
    sim.step(f64::NAN, -1.0, false, None).unwrap();
}
