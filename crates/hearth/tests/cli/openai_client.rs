//! The official OpenAI Python client against a node (`tests/python/openai_client.py`).
//!
//! The Python is `HEARTH_PYTHON` (default `python3`). Without the `openai` package the test
//! says so and passes, unless `HEARTH_EXPECT_OPENAI=1` (as `.ci/run` sets after installing it),
//! which makes a missing package a failure.

use crate::serve::serve;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");

/// The Python that has the `openai` package, or why there is none.
fn python() -> Result<String, String> {
    let python = std::env::var("HEARTH_PYTHON").unwrap_or_else(|_| "python3".to_string());
    match Command::new(&python).args(["-c", "import openai"]).output() {
        Ok(o) if o.status.success() => Ok(python),
        Ok(o) => Err(format!(
            "{python} cannot import openai: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{python} does not run: {e}")),
    }
}

/// Runs the script against `base_url` (e.g. `http://127.0.0.1:52415/v1`) with `api_key`;
/// panics with its output when a check fails. Returns false when it could not run (no
/// `openai` package and not expected).
pub(crate) fn run_openai_client(base_url: &str, api_key: &str) -> bool {
    let python = match python() {
        Ok(p) => p,
        Err(why) => {
            if std::env::var("HEARTH_EXPECT_OPENAI").as_deref() == Ok("1") {
                panic!("HEARTH_EXPECT_OPENAI=1 but {why}");
            }
            eprintln!(
                "skipped the OpenAI client test: {why} (pip install openai, or point \
                 HEARTH_PYTHON at a Python that has it; HEARTH_EXPECT_OPENAI=1 makes this a failure)"
            );
            return false;
        }
    };
    let out = Command::new(&python)
        .arg(SCRIPT)
        .env("HEARTH_BASE_URL", base_url)
        .env("HEARTH_API_KEY", api_key)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the OpenAI client's checks failed against {base_url}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
    eprintln!("{}", stdout.trim());
    true
}

#[test]
fn openai_python_client_works_against_a_node_with_tokens() {
    let served = serve("openai-client", &["--require-token"]);
    let node = &served.node;
    let token = crate::cluster::harness::token(&node.data_dir, "user", "openai-client");
    if run_openai_client(&format!("http://{}/v1", node.api), &token) {
        assert!(!node.log().contains("panicked"), "{}", node.log());
    }
}
