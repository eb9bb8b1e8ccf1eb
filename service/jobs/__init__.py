"""What a job is: its spec, its inputs, the problem they define, sweeps of it, its status and its result."""
