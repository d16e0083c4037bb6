"""The teacher: EfficientAT's MobileNetV3 "mn" CNNs, their mel front-end and the registry of
released checkpoints. Pure torch; never imports `pipeline`."""
