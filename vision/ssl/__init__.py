"""Self-supervised pretraining: DINOv2 (heads, losses, schedules, optimizer, step, loop). config.task='dinov2'."""
