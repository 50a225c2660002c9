"""Event-driven MLOps automation for Azure Machine Learning on Azure Functions."""
