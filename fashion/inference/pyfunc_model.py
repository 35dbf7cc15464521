"""The pyfunc's model-from-code file, MLflow's recommended form: MLflow keeps this file with the logged model
and runs it to build the model. A logged model object would be pickled instead: opaque to whoever reviews a
registry, tied to the Python and cloudpickle versions that wrote it, and free to run any code it carries."""

import mlflow

from fashion.inference.pyfunc import FashionTaggerPyfunc

mlflow.models.set_model(FashionTaggerPyfunc())
