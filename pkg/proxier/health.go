package proxier

import "net/netip"

// HealthCheckPorts returns, for each Service (namespace/name) that needs a
// health check node port (LoadBalancer with externalTrafficPolicy Local),
// its port, and the number of ready endpoints on this node, counted by
// distinct address across all the Service's ports and families as
// kube-proxy counts them. Terminating endpoints do not count: a node that
// only has terminating endpoints must be taken out of the load balancer.
func HealthCheckPorts(snap *Snapshot) (map[string]int32, map[string]int) {
	ports := map[string]int32{}
	ips := map[string]map[netip.Addr]bool{}
	for name, svc := range snap.Services {
		if svc.HealthCheckNodePort == 0 {
			continue
		}
		key := name.ServiceKey()
		ports[key] = svc.HealthCheckNodePort
		if ips[key] == nil {
			ips[key] = map[netip.Addr]bool{}
		}
		for _, ep := range snap.Endpoints[name] {
			if ep.Ready && snap.Node.Name != "" && ep.NodeName == snap.Node.Name {
				ips[key][ep.Addr] = true
			}
		}
	}
	local := map[string]int{}
	for key, set := range ips {
		local[key] = len(set)
	}
	return ports, local
}
