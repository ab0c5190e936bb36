"""Shop side: the outbox delivery threads, the NATS bus publisher and its workers."""
