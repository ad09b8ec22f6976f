// Package manifest reads Services, EndpointSlices and Nodes from YAML or JSON
// files (multi-document, or a `kubectl get -o yaml` List), so the offline
// commands (render, explain) can build the model with no API server. Errors
// name the file, the document or object, and the field.
package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// Objects is what the files held.
type Objects struct {
	Services []*v1.Service
	Slices   []*discovery.EndpointSlice
	Nodes    []*v1.Node
}

var decoder = serializer.NewCodecFactory(scheme.Scheme).UniversalDeserializer()

// Load reads every file ("-" is stdin).
func Load(paths []string, stdin io.Reader) (*Objects, error) {
	out := &Objects{}
	for _, p := range paths {
		var data []byte
		var err error
		if p == "-" {
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(p)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if err := out.add(p, data); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (o *Objects) add(file string, data []byte) error {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", file, doc, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || isOnlyComments(raw) {
			continue
		}
		where := fmt.Sprintf("%s: document %d", file, doc)
		if err := o.addDoc(where, raw); err != nil {
			return err
		}
	}
}

func isOnlyComments(raw []byte) bool {
	for _, line := range strings.Split(string(raw), "\n") {
		l := strings.TrimSpace(line)
		if l != "" && !strings.HasPrefix(l, "#") && l != "---" {
			return false
		}
	}
	return true
}

func (o *Objects) addDoc(where string, raw []byte) error {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	obj, gvk, err := decoder.Decode(js, nil, nil)
	if runtime.IsNotRegisteredError(err) {
		return nil // a kind the proxy does not read
	}
	if err != nil {
		return fmt.Errorf("%s: %s", where, cleanDecodeError(err))
	}
	name := func(ns, n string) string {
		if ns == "" {
			return fmt.Sprintf("%s %s %s", where, gvk.Kind, n)
		}
		return fmt.Sprintf("%s %s %s/%s", where, gvk.Kind, ns, n)
	}
	switch t := obj.(type) {
	case *v1.Service:
		if t.Namespace == "" {
			t.Namespace = "default"
		}
		if t.Name == "" {
			return fmt.Errorf("%s: metadata.name: required", name(t.Namespace, ""))
		}
		o.Services = append(o.Services, t)
	case *discovery.EndpointSlice:
		if t.Namespace == "" {
			t.Namespace = "default"
		}
		if t.Name == "" {
			return fmt.Errorf("%s: metadata.name: required", name(t.Namespace, ""))
		}
		o.Slices = append(o.Slices, t)
	case *v1.Node:
		if t.Name == "" {
			return fmt.Errorf("%s: metadata.name: required", name("", ""))
		}
		o.Nodes = append(o.Nodes, t)
	case *v1.List:
		for i, item := range t.Items {
			if err := o.addDoc(fmt.Sprintf("%s items[%d]", where, i), item.Raw); err != nil {
				return err
			}
		}
	}
	// Other kinds (Pods, Deployments, ...) are not the proxy's input.
	return nil
}

// cleanDecodeError shortens the decoder's messages to one line.
func cleanDecodeError(err error) string {
	s := err.Error()
	s = strings.ReplaceAll(s, "\n", " ")
	return s
}
