"""aviary: retrain, judge, export and canary-deploy a TensorFlow model."""
