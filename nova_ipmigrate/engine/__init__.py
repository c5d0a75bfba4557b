"""ipmigrate-engine: the control plane of split-memory instances.

The engine validates operation requests (split, partial migration,
reintegration, host drain), persists them, runs them as persistent state
machines through the hosts' agents (which run the data plane themselves),
limits how many part moves run at once per host and per link, resumes every
unfinished operation after a restart, and notifies their progress over
oslo.messaging.
"""

TOPIC = "ipmigrate-engine"
