"""The data path: video files on disk -> sampled frame indices -> uint8 clips -> augmented batches."""
