//! `runvm-guest-counters PID`: the KVM vCPU counters of the VM that process
//! PID runs (summed over its vCPUs), as one JSON object on stdout.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(pid), None) = (args.next(), args.next()) else {
        eprintln!("usage: runvm-guest-counters VMM_PID");
        return ExitCode::from(2);
    };
    let Ok(pid) = pid.parse::<u32>() else {
        eprintln!("runvm-guest-counters: not a pid: {pid:?}");
        return ExitCode::from(2);
    };
    match runvm::kvm_stats::read(pid) {
        Ok(counters) => {
            let mut object = serde_json::Map::new();
            for (name, value) in &counters.values {
                object.insert((*name).to_owned(), (*value).into());
            }
            object.insert("vcpus".to_owned(), counters.vcpus.into());
            println!("{}", serde_json::Value::Object(object));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runvm-guest-counters: cannot read the counters of process {pid}: {e}");
            ExitCode::FAILURE
        }
    }
}
