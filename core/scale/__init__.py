"""Scale-out: sharded profiles on torch.distributed and launching local processes. May import every other group."""
