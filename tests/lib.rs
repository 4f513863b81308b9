//! runvm's end-to-end tests: see `tests/*.rs`. They boot real microVMs from
//! the artifacts `make build` produces, so they need /dev/kvm.
