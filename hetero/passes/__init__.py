"""Graph passes: optimize, place, partition, schedule, memory (each a pure function)."""
