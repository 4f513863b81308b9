//! OCI hooks from config.json, run on the host with the container's state
//! JSON on stdin, as the runtime spec describes: `path` is executed with
//! `args` (the first of which is argv[0]) and exactly `env`, and is killed
//! after `timeout` seconds.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

/// The points in the lifecycle where hooks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    /// Deprecated but still honoured; runs with createRuntime.
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookPoint {
    fn name(self) -> &'static str {
        match self {
            HookPoint::Prestart => "prestart",
            HookPoint::CreateRuntime => "createRuntime",
            HookPoint::CreateContainer => "createContainer",
            HookPoint::StartContainer => "startContainer",
            HookPoint::Poststart => "poststart",
            HookPoint::Poststop => "poststop",
        }
    }

    fn of(self, hooks: &Hooks) -> Vec<Hook> {
        let list = match self {
            HookPoint::Prestart =>
            {
                #[allow(deprecated)]
                hooks.prestart()
            }
            HookPoint::CreateRuntime => hooks.create_runtime(),
            HookPoint::CreateContainer => hooks.create_container(),
            HookPoint::StartContainer => hooks.start_container(),
            HookPoint::Poststart => hooks.poststart(),
            HookPoint::Poststop => hooks.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{point} hook #{index} ({path}) {problem}")]
pub struct HookError {
    point: &'static str,
    index: usize,
    path: String,
    problem: String,
}

/// Runs the hooks of `point` in order, each given `state` (the OCI state
/// JSON) on stdin; stops at the first that fails.
pub fn run(
    point: HookPoint,
    hooks: Option<&Hooks>,
    state: &serde_json::Value,
) -> Result<(), HookError> {
    let Some(hooks) = hooks else {
        return Ok(());
    };
    let input = state.to_string();
    for (index, hook) in point.of(hooks).iter().enumerate() {
        let fail = |problem: String| HookError {
            point: point.name(),
            index,
            path: hook.path().display().to_string(),
            problem,
        };
        run_one(hook, &input).map_err(fail)?;
    }
    Ok(())
}

fn run_one(hook: &Hook, input: &str) -> Result<(), String> {
    let mut command = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((argv0, rest)) = args.split_first() {
            command.arg0(argv0).args(rest);
        }
    }
    command.env_clear();
    for entry in hook.env().iter().flatten() {
        if let Some((name, value)) = entry.split_once('=') {
            command.env(name, value);
        }
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot be started: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is fine.
        let _ = stdin.write_all(input.as_bytes());
    }
    let deadline = hook
        .timeout()
        .and_then(|seconds| u64::try_from(seconds).ok())
        .filter(|seconds| *seconds > 0)
        .map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("timed out".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    Err(format!(
        "failed ({status}){}",
        if stderr.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", stderr.trim())
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(value: serde_json::Value) -> Hooks {
        serde_json::from_value(value).expect("hooks")
    }

    #[test]
    fn hooks_get_the_state_args_and_env_and_failures_are_named() {
        let out = std::env::temp_dir().join(format!("runvm-hook-test-{}", std::process::id()));
        let script = format!("cat > {0}; echo \"$0 $1 $FOO\" >> {0}", out.display());
        let hooks = hooks(serde_json::json!({
            "poststart": [{"path": "/bin/sh", "args": ["hook-name", "-c", script, "zero", "one"],
                           "env": ["FOO=bar"]}],
            "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}],
            "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}]
        }));
        let state = serde_json::json!({"id": "c1", "status": "running"});
        run(HookPoint::Poststart, Some(&hooks), &state).expect("poststart");
        let written = std::fs::read_to_string(&out).expect("the hook wrote");
        assert_eq!(
            written,
            "{\"id\":\"c1\",\"status\":\"running\"}zero one bar\n"
        );
        let err = run(HookPoint::Poststop, Some(&hooks), &state).expect_err("exit 3");
        assert!(err.to_string().contains("poststop hook #0"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        let err = run(HookPoint::CreateRuntime, Some(&hooks), &state).expect_err("timeout");
        assert!(err.to_string().contains("timed out"), "{err}");
        run(HookPoint::Prestart, Some(&hooks), &state).expect("no prestart hooks");
        std::fs::remove_file(&out).expect("cleanup");
    }
}
