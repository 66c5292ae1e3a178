"""certfab's task collection, shared by `fab` (fabfile.py) and `inv`."""

from invoke.collection import Collection

from tasks import hosts, lab

ns = Collection()
for name in hosts.__all__:
    ns.add_task(getattr(hosts, name))
ns.add_collection(lab.ns, name="lab")
ns.configure({"run": {"echo": False}})
