package proxier

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func service(name string, mutate func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	if mutate != nil {
		mutate(s)
	}
	return s
}

func TestFilterSkipsWhatKubeProxySkips(t *testing.T) {
	cases := []struct {
		name   string
		filter Filter
		svc    *v1.Service
		skip   bool
	}{
		{"plain", Filter{}, service("a", nil), false},
		{"headless", Filter{}, service("a", func(s *v1.Service) {
			s.Spec.ClusterIP = v1.ClusterIPNone
			s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
		}), true},
		{"external name", Filter{}, service("a", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName; s.Spec.ClusterIP = "" }), true},
		{"other proxy", Filter{}, service("a", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "x"} }), true},
		{"ours by name", Filter{ProxyName: "switchyard"}, service("a", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "switchyard"} }), false},
		{"unlabelled with a name", Filter{ProxyName: "switchyard"}, service("a", nil), true},
		{"another name", Filter{ProxyName: "switchyard"}, service("a", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "kube-proxy"} }), true},
	}
	for _, c := range cases {
		ports, err := c.filter.ServicePorts(c.svc)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if got := len(ports) == 0; got != c.skip {
			t.Errorf("%s: skipped = %v, want %v (reason %q)", c.name, got, c.skip, c.filter.SkipReason(c.svc))
		}
	}
	if got := (Filter{}).ServiceLabelSelector(); got != "!"+LabelServiceProxyName {
		t.Errorf("default selector %q", got)
	}
	if got := (Filter{ProxyName: "sy"}).ServiceLabelSelector(); got != LabelServiceProxyName+"=sy" {
		t.Errorf("named selector %q", got)
	}
}

func TestServicePortsFields(t *testing.T) {
	svc := service("web", func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}, v1.ServicePort{Name: "noproto", Port: 81})
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.ClusterIPs = []string{"10.96.0.1", "fd00::1"}
	})
	ports, err := (Filter{}).ServicePorts(svc)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 3 {
		t.Fatalf("got %d ports", len(ports))
	}
	if ports[1].Name.Protocol != v1.ProtocolUDP || ports[1].Name.String() != "default/web:dns" {
		t.Errorf("port 1 = %+v", ports[1].Name)
	}
	if ports[2].Name.Protocol != v1.ProtocolTCP {
		t.Errorf("empty protocol not read as TCP")
	}
	if ports[0].AffinityTimeout != DefaultAffinityTimeout {
		t.Errorf("affinity timeout = %d", ports[0].AffinityTimeout)
	}
	if v6, ok := ports[0].ClusterIP(v1.IPv6Protocol); !ok || v6 != netip.MustParseAddr("fd00::1") {
		t.Errorf("IPv6 cluster IP = %v %v", v6, ok)
	}
	// A bad externalIP is reported but the ClusterIP still works.
	bad := service("bad", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"1.2.3.4", "not-an-ip"} })
	ports, err = (Filter{}).ServicePorts(bad)
	if err == nil || !strings.Contains(err.Error(), "spec.externalIPs[1]") {
		t.Errorf("error %v does not name the field", err)
	}
	if len(ports) != 1 || len(ports[0].ExternalIPs) != 1 {
		t.Errorf("valid parts of a partly bad Service were dropped: %+v", ports)
	}
	// No usable cluster IP at all: nothing, with an error.
	ports, err = (Filter{}).ServicePorts(service("worse", func(s *v1.Service) { s.Spec.ClusterIP = "x"; s.Spec.ClusterIPs = []string{"x"} }))
	if err == nil || len(ports) != 0 {
		t.Errorf("unusable cluster IP: ports %v err %v", ports, err)
	}
}

func TestSliceEndpointsConditions(t *testing.T) {
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints: []discovery.Endpoint{
			{Addresses: []string{"10.0.0.1"}}, // all nil
			{Addresses: []string{"10.0.0.2"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(false)}},
			{Addresses: []string{"10.0.0.3"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}},
			{Addresses: []string{"bogus"}},
			{Addresses: []string{"10.0.0.4"}, NodeName: ptr.To("n1"), Zone: ptr.To("z1"), Hints: &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "z1"}}}},
		},
	}
	if key, reason := SliceServiceName(slice); key != "default/web" {
		t.Fatalf("service = %q (%s)", key, reason)
	}
	got, err := SliceEndpoints(slice)
	if err == nil || !strings.Contains(err.Error(), "endpoints[3]") {
		t.Errorf("bad address not reported by field: %v", err)
	}
	eps := got.For(PortKey{Name: "http", Protocol: v1.ProtocolTCP})
	if len(eps) != 4 {
		t.Fatalf("endpoints = %+v", eps)
	}
	if e := eps[0]; !e.Ready || !e.Serving || e.Terminating {
		t.Errorf("nil conditions read as %+v, want ready, serving, not terminating", e)
	}
	if e := eps[1]; e.Ready || e.Serving {
		t.Errorf("ready=false with serving nil read as %+v; serving defers to ready", e)
	}
	if e := eps[2]; e.Ready || !e.Serving || !e.Terminating {
		t.Errorf("terminating endpoint read as %+v", e)
	}
	if e := eps[3]; e.NodeName != "n1" || len(e.zoneHints()) != 1 || e.Port != 8080 {
		t.Errorf("topology fields read as %+v", e)
	}

	for _, c := range []struct {
		mutate func(*discovery.EndpointSlice)
		why    string
	}{
		{func(s *discovery.EndpointSlice) { s.AddressType = discovery.AddressTypeFQDN }, "FQDN"},
		{func(s *discovery.EndpointSlice) { s.Labels = nil }, "label"},
		{func(s *discovery.EndpointSlice) { s.Labels[LabelHeadless] = "" }, "headless"},
	} {
		s := slice.DeepCopy()
		c.mutate(s)
		if key, reason := SliceServiceName(s); key != "" || !strings.Contains(reason, c.why) {
			t.Errorf("%s slice not ignored: %q %q", c.why, key, reason)
		}
	}
}

func TestMergeSlicesDeduplicates(t *testing.T) {
	k := PortKey{Name: "http", Protocol: v1.ProtocolTCP}
	a := Endpoint{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Ready: true}
	aNotReady := a
	aNotReady.Ready = false
	b := Endpoint{Addr: netip.MustParseAddr("10.0.0.2"), Port: 80, Ready: true}
	merged := MergeSlices([]NamedSlice{
		{Name: "web-b", Ports: PortList{{Port: k, Endpoints: []Endpoint{aNotReady, b}}}},
		{Name: "web-a", Ports: PortList{{Port: k, Endpoints: []Endpoint{a}}}},
	})
	eps := merged.For(k)
	if len(eps) != 2 {
		t.Fatalf("merged %+v", eps)
	}
	if !eps[0].Ready {
		t.Error("the first slice by name should win for a duplicate endpoint")
	}
}
