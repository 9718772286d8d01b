//! `hearth devices`: one measured CPU device, cached on the second run; `--watch` telemetry.

use serde_json::Value;
use std::process::Command;

fn devices_json(data_home: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["devices", "--json"])
        .env("XDG_DATA_HOME", data_home)
        .output()
        .expect("the hearth binary runs");
    assert!(
        out.status.success(),
        "hearth devices failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("hearth devices --json prints JSON")
}

#[test]
fn measures_once_then_reuses() {
    let home = std::env::temp_dir().join(format!("hearth-cli-devices-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);

    let first = devices_json(&home);
    let devices = first["devices"].as_array().expect("a devices array");
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert!(d["id"].as_str().unwrap().starts_with("cpu-"));
    assert_eq!(d["backends"], serde_json::json!(["cpu"]));
    assert!(d["bandwidth_gbs"].as_f64().unwrap() > 0.0);
    assert!(d["read_baseline_gbs"].as_f64().unwrap() > 0.0);
    assert!(d["tflops"].as_f64().unwrap() > 0.0);
    assert!(d["memory_budget_bytes"].as_u64().unwrap() > 0);
    assert_eq!(d["cached"], false);
    assert!(home.join("hearth/devices.json").is_file());

    let second = devices_json(&home);
    let d2 = &second["devices"][0];
    assert_eq!(d2["cached"], true);
    assert_eq!(d2["id"], d["id"]);
    assert_eq!(d2["bandwidth_gbs"], d["bandwidth_gbs"]);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn watch_prints_the_requested_number_of_telemetry_lines() {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["devices", "--watch", "--samples", "2", "--period-ms", "50"])
        .output()
        .expect("the hearth binary runs");
    assert!(
        out.status.success(),
        "hearth devices --watch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        assert!(l.starts_with("memory "), "{l}");
        assert!(l.contains(" GiB used"), "{l}");
        assert!(l.contains("utilisation "), "{l}");
    }
}
