"""The Docker network + IPAM plugin (libnetwork's remote driver API, v1 JSON over a Unix socket).

Owns, one module each: the HTTP/1.1 server on the plugin socket (``server``, h11 over
trio), the plugin's persistent bookkeeping (``state``: Docker networks, pools, address
reservations and endpoints mapped to cluster rows), the veth pair left in the agent's
namespace for dockerd to move (``veth``), the IPAM handlers (``ipam``), the network
driver handlers (``driver``), the agent extension that serves them (``plugin``), and
endpoints named after their containers (``naming``, asking dockerd's API through
``dockerapi``). Does not: touch tables and kernel other than through
``agent.overlay.extension.Overlay``. docs/runtimes.md ("Docker") is the user's side.
"""
