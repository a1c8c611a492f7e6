"""Tools around the models: the model-size report (`python -m vision.tools.summary`), visualisation, benchmarks."""
