"""The jobs the command line runs (evaluate, label, benchmark), as the Ray driver runs them.

`options` holds the options they share and `lifecycle` the steps every job takes (check the
request, load the weights, join or start Ray, size the pipeline, run it, stop cleanly);
`datasets` turns a registry entry or command-line flags into the videos to score;
`schemas` and `parquet_writer` define and write every output table, `results` the evaluate
job's prediction shards, `label_state` and `label_store` the label job's index and files;
`summary`, `metrics`, `progress` and `machine` report. Reading and writing local paths and S3
goes through `x3d.storage`, and frame folders are read by `worker.rawframes`. The pipeline
itself is `cluster.pipeline`; the per-video work runs without Ray in `x3d` and `worker`.
"""
