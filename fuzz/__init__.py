"""Fuzz targets for the hostile-input suite (docs/internet.md, "The hostile-input suite").

`make fuzz` runs them under atheris (coverage-guided, libFuzzer) for FUZZ_SECONDS each;
`python -m fuzz.run --engine hypothesis` runs the same targets on Hypothesis-generated
bytes where atheris is not installed. Both stop at the first input that breaks a
promise and keep it under fuzz/crashes/. The targets live outside tests/ because they
run open-ended; tests/hostile/test_fuzz_targets.py feeds each a handful of inputs so
they cannot rot.
"""
