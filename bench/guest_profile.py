#!/usr/bin/env python3
"""Report for bench/guest-profile.sh: reads `perf script -F event,trace`
lines of kvm:kvm_emulate_insn and kvm:kvm_apic_accept_irq on stdin, and prints
the guest kernel functions by emulated-instruction count (symbolised with
`nm -n` of the guest's vmlinux), and the interrupts the guest's local APIC accepted, by vector (236: its timer)."""

import argparse
import bisect
import collections
import re
import subprocess
import sys

INSN = re.compile(r"kvm_emulate_insn:\s+[0-9a-f]+:([0-9a-f]+):")
# Rough groups by function name, for a first look (a function counts in the
# first group whose pattern matches it).
GROUPS = [
    ("timer tick, timekeeping, scheduler accounting",
     re.compile(r"load_avg|timekeeping|hrtimer|tick|update_curr|reweight|vsyscall"
                r"|rcu_|ktime|update_cfs|pvclock|clockevent|account_|update_rq_clock"
                r"|min_vruntime|sched_clock|read_tsc|timerqueue|lapic|posix_cpu_timers"
                r"|update_process_times|calc_global|__calc_delta|sched_slice")),
    ("page cache, page allocation, memcg",
     re.compile(r"^xa|^xas_|folio|lru|page|memcg|rstat|alloc_pages|free_unref|filemap"
                r"|readahead|pcp|free_block|drain_array|cache_reap|zone")),
    ("FUSE, virtio", re.compile(r"fuse|virtio|virtqueue|vring|vp_")),
    ("page tables, faults", re.compile(r"pte|pmd|pud|p4d|fault|unmap_|zap_|rmap|tlb|vma")),
]
VIRQ = re.compile(r"kvm_apic_accept_irq:.*\bvec (\d+)")


def text_symbols(kernel):
    """Sorted (address, name) of the kernel's text symbols."""
    listing = subprocess.run(
        ["nm", "-n", kernel], check=True, capture_output=True, text=True
    ).stdout
    symbols = []
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            symbols.append((int(parts[0], 16), parts[2]))
    if not symbols:
        sys.exit(f"guest-profile: no text symbols in {kernel} (stripped?)")
    return symbols


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--calls",
        nargs="*",
        default=["do_syscall_64", "exc_page_fault", "handle_mm_fault", "copy_process",
                 "do_exit", "fuse_simple_request", "sysvec_apic_timer_interrupt",
                 "clear_page_orig", "clear_page_rep", "copy_page", "bprm_execve",
                 "schedule", "__schedule"],
        help="functions whose calls to count")
    args = parser.parse_args()
    symbols = text_symbols(args.kernel)
    addresses = [address for address, _ in symbols]
    by_rip = collections.Counter()
    vectors = collections.Counter()
    for line in sys.stdin:
        match = INSN.search(line)
        if match:
            by_rip[match.group(1)] += 1
            continue
        match = VIRQ.search(line)
        if match:
            vectors[match.group(1)] += 1
    by_function = collections.Counter()
    for rip, count in by_rip.items():
        index = bisect.bisect_right(addresses, int(rip, 16)) - 1
        name = symbols[index][1] if index >= 0 else "?"
        by_function[name] += count
    total = sum(by_function.values())
    print(f"emulated instructions: {total:,}")
    print(f"interrupts accepted: {sum(vectors.values()):,} " + ", ".join(
        f"vector {vector}: {count:,}" for vector, count in vectors.most_common()))
    grouped = collections.Counter()
    for name, count in by_function.items():
        group = next((label for label, pattern in GROUPS if pattern.search(name)), "other")
        grouped[group] += count
    print(f"\n{'instructions':>14} {'share':>6}  group (by function name, rough)")
    for group, count in grouped.most_common():
        print(f"{count:>14,} {100 * count / max(total, 1):>5.1f}%  {group}")
    # Emulations of a function's first instruction: how often it was
    # entered at the top (calls; loops back to the entry count again).
    entries = {
        name: by_rip.get(f"{address:x}", 0) for address, name in symbols
    }
    print(f"\n{'instructions':>14} {'share':>6} {'entries':>9} {'per entry':>9}  function")
    for name, count in by_function.most_common(args.top):
        calls = entries.get(name, 0)
        per = f"{count / calls:,.0f}" if calls else "-"
        print(f"{count:>14,} {100 * count / max(total, 1):>5.1f}% {calls:>9,} {per:>9}  {name}")
    print("\nentries of chosen functions (calls):")
    for name in args.calls:
        print(f"  {name}: {entries.get(name, 0):,}")


if __name__ == "__main__":
    main()
