"""Video backbones (R3D, R(2+1)D, C3D, S3D, tiny CPU variants) returning pooled features and stage maps."""
