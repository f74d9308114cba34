"""Simulators and test servers that calsync's own tests use and that users can run too.

`radicale` starts a real Radicale CalDAV server in a folder of your choice (also the fastest
way to load thousands of events into one); `icalgen` writes realistic, deterministic calendar
objects. Nothing here is imported by the operator at run time.
"""
