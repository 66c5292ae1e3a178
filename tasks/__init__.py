"""certfab's task collection, shared by `fab` (fabfile.py) and `inv`."""

from invoke.collection import Collection

from . import hosts, lab, lifecycle

ns = Collection()
for name in hosts.__all__:
    ns.add_task(getattr(hosts, name))
for name in lifecycle.__all__:
    ns.add_task(getattr(lifecycle, name))
ns.add_collection(lab.ns, name="lab")
ns.configure({"run": {"echo": False}})
