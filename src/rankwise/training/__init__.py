"""Fine-tuning custom cross-encoders: negative mining, training, promotion through the registry."""
