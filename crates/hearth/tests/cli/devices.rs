//! `hearth devices`: one measured CPU device, cached on the second run; the devices the platform
//! probes find (lavapipe's Vulkan device where CI installs it); declared devices; `--watch`
//! telemetry.

use serde_json::Value;
use std::process::Command;

fn devices_json(data_home: &std::path::Path) -> Value {
    devices_json_with(data_home, &[])
}

fn devices_json_with(data_home: &std::path::Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["devices", "--json"])
        .args(extra)
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
    let cpus: Vec<&Value> = devices
        .iter()
        .filter(|d| d["backends"] == serde_json::json!(["cpu"]))
        .collect();
    assert_eq!(cpus.len(), 1, "{first:#}");
    let d = cpus[0];
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

fn temp_home(tag: &str) -> std::path::PathBuf {
    let home = std::env::temp_dir().join(format!("hearth-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    home
}

#[test]
fn lists_the_vulkan_device_where_one_is_installed() {
    let home = temp_home("vulkan");
    let out = devices_json(&home);
    let vulkan: Vec<&Value> = out["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["backends"]
                .as_array()
                .is_some_and(|b| b.contains(&"vulkan".into()))
        })
        .collect();
    let expected = std::env::var("HEARTH_EXPECT_VULKAN").is_ok_and(|v| v == "1");
    if vulkan.is_empty() && !expected {
        eprintln!(
            "no Vulkan device on this machine (install mesa-vulkan-drivers, or set \
             HEARTH_EXPECT_VULKAN=1 to require one): only the JSON shape was checked"
        );
    } else {
        let lavapipe = vulkan
            .iter()
            .find(|d| d["kind"] == "software-cpu")
            .unwrap_or_else(|| panic!("no software Vulkan device in {out:#}"));
        assert!(lavapipe["name"].as_str().unwrap().contains("llvmpipe"));
        assert!(lavapipe["memory_total_bytes"].as_u64().unwrap() > 0);
        assert!(lavapipe["id"].as_str().unwrap().starts_with("vk-"));
    }
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_declared_device_is_listed_as_declared_and_its_memory_is_enforced() {
    let home = temp_home("declared");
    let profile = home.join("phone.toml");
    std::fs::write(
        &profile,
        "name = \"phone\"\nbackend = \"cpu\"\nmemory_gib = 0.05\nbandwidth_gbs = 5.0\n\
         tflops = 0.05\nprecisions = [\"f32\", \"f16\"]\ncompute_share = 0.5\n",
    )
    .unwrap();
    let out = devices_json_with(&home, &["--device-profile", profile.to_str().unwrap()]);
    let declared: Vec<&Value> = out["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["declared"] == true)
        .collect();
    assert_eq!(declared.len(), 1, "{out:#}");
    assert_eq!(declared[0]["name"], "phone");
    assert_eq!(declared[0]["compute_share"], 0.5);
    assert_eq!(
        declared[0]["memory_budget_bytes"],
        (0.05 * (1u64 << 30) as f64) as u64
    );

    // 0.05 GiB cannot hold the 98 MB test model: the engine refuses and says why.
    let model = crate::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let run = crate::hearth(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--device-profile",
        profile.to_str().unwrap(),
        "--prompt",
        "Hi",
        "-n",
        "2",
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("declared device `phone`"), "{err}");
    assert!(err.contains("memory limit is 53687091 bytes"), "{err}");

    std::fs::write(&profile, "name = \"phone\"\nmemory_gib = -1\n").unwrap();
    let bad = crate::hearth(&["devices", "--device-profile", profile.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("device profile"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let _ = std::fs::remove_dir_all(&home);
}
