"""OCPP 2.0.1 central system that plans a charging site with a model-predictive controller."""

__version__ = "0.1.0"
