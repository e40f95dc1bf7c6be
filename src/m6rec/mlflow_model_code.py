"""The file MLflow runs to build the m6rec pyfunc model ("models from code": nothing pickled).

Not imported by m6rec: :func:`m6rec.registry.log_bundle_model` hands its path to ``mlflow.pyfunc.log_model``
and MLflow executes it when the model is logged and loaded. The model itself is
:class:`m6rec.mlflow_model.BundleRecommender`.
"""

from mlflow.models import set_model

from m6rec.mlflow_model import BundleRecommender

set_model(BundleRecommender())
