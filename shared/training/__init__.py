"""The training job's own code: uploaded as the Azure ML command job's code and run locally by the embedded backend."""
