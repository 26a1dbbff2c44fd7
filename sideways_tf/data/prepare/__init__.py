"""Offline data preparation: video files -> sharded DMVR records, run once per split.

  decode.py     PyAV decoding, resampled in time and resized (needs sideways_tf[video])
  listings.py   a folder of class folders, or a CSV, as a SplitListing of videos
  ucf101.py, hmdb51.py, kinetics.py   the official splits of each dataset as listings
  convert.py    the resumable, parallel shard writer and its CLI (`sideways-convert`)

Training reads the records with sideways_tf.data.dmvr and never imports this package.
"""
