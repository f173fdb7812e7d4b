"""The work done inside Ray's worker processes, as plain Python that never imports Ray.

`decode_task` is what a decode task runs (read, decode, sample, resize and trim to the box the
crops cover: no torch; the model actor cuts the crops),
`model_runner` what a model actor runs (one X3D on one device), `rawframes` reads frame
folders, `items` holds `VideoItem` (one video to score), `cpus` finds the CPUs this process
really owns (affinity, cgroup quota), and `stages` is the optional stage timer the benchmark
plugs into both halves. `cluster/` decides where and when these
run; tests and notebooks call them directly. Imports go down only: this package may use
`x3d`, never `cluster`, `jobs` or `ray`.
"""
