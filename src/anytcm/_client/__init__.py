"""The public client's parts, one job each: staging inputs into a payload, the retry loop,
streamed inferences, and the info and management actions. `anytcm.client` puts them together.
"""
