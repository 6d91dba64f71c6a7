"""The job contract shared by the API and the workers: parameters, states, records, storage."""
