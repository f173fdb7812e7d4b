"""Batch jobs around the X3D model: where videos come from and where results go.

`storage` reads and writes local paths and S3 objects, `datasets` turns a registry entry
or command-line flags into a stream of videos, `results` writes per-video predictions
as Parquet shards, and `rawframes` reads pre-extracted JPEG frames. Nothing here needs
Ray or a GPU, so every piece can be run and tested on its own.
"""
