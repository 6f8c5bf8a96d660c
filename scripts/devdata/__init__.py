"""What only the sample-data builders (scripts/) and the benchmarks (bench/) use: reading MNIST's
IDX files, splitting a dataset over sites, shared argument types. The app never imports it."""
