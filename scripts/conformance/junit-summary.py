#!/usr/bin/env python3
"""Counts and one line per failure (spec, then the gist of its error) from
critest's JUnit reports (-report-dir): junit-summary.py REPORT.xml..."""
import re
import sys
import xml.etree.ElementTree as ET

counts = {"passed": 0, "failed": 0, "skipped": 0}
for path in sys.argv[1:]:
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if name.startswith("[BeforeSuite]") or name.startswith("[AfterSuite]"):
            continue
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if case.find("skipped") is not None:
            counts["skipped"] += 1
        elif failure is not None:
            counts["failed"] += 1
            text = (failure.get("message") or "") + " " + (failure.text or "")
            gist = re.search(r"desc = (.{0,160})", text) or re.search(r"(Expected.{0,160})", text, re.S)
            gist = gist.group(1) if gist else text.strip()[:160]
            print(f"FAIL {name}\n     {' '.join(gist.split())[:200]}")
        else:
            counts["passed"] += 1
print(counts)
