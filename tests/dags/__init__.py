"""Tests of the Airflow DAGs (dags/) and the Docker files (docker/)."""
