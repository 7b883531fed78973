// Package deploy checks the deployment files offline: every Kubernetes
// manifest under k8s/ decodes strictly into the API types (k8s.io/api;
// unknown or duplicate fields refused), and what they say about the daemon
// (config, probes, ports, metric names, routing header) matches the real
// daemon of this checkout. It is a module of its own so that k8s.io/api
// stays out of the main module; `make test` runs it.
package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/refiners-go/refiners/daemon"
)

// manifests holds every object of k8s/, by kind and name.
type manifests struct {
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	pdbs        map[string]*policyv1.PodDisruptionBudget
	hpas        map[string]*autoscalingv2.HorizontalPodAutoscaler
	gpuPatch    *appsv1.Deployment
}

// decodeStrict turns one YAML document into v, refusing duplicate keys
// and fields v's type does not have.
func decodeStrict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// decodeFile decodes every document of a manifest file into its API type.
func decodeFile(path string, m *manifests) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for i, doc := range docSep.Split(string(b), -1) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return fmt.Errorf("%s document %d: %w", path, i, err)
		}
		if head.Kind == "" && strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var obj any
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 Deployment":
			obj = &appsv1.Deployment{}
		case "v1 Service":
			obj = &corev1.Service{}
		case "v1 ConfigMap":
			obj = &corev1.ConfigMap{}
		case "v1 Secret":
			obj = &corev1.Secret{}
		case "policy/v1 PodDisruptionBudget":
			obj = &policyv1.PodDisruptionBudget{}
		case "autoscaling/v2 HorizontalPodAutoscaler":
			obj = &autoscalingv2.HorizontalPodAutoscaler{}
		default:
			return fmt.Errorf("%s document %d: %s %s is not a kind this test knows", path, i, head.APIVersion, head.Kind)
		}
		if err := decodeStrict([]byte(doc), obj); err != nil {
			return fmt.Errorf("%s document %d (%s %s): %w", path, i, head.Kind, head.Metadata.Name, err)
		}
		if head.Metadata.Name == "" {
			return fmt.Errorf("%s document %d: %s without a name", path, i, head.Kind)
		}
		name := head.Metadata.Name
		switch o := obj.(type) {
		case *appsv1.Deployment:
			if strings.Contains(filepath.ToSlash(path), "/gpu/") {
				m.gpuPatch = o
				continue
			}
			m.deployments[name] = o
		case *corev1.Service:
			m.services[name] = o
		case *corev1.ConfigMap:
			m.configMaps[name] = o
		case *corev1.Secret:
			m.secrets[name] = o
		case *policyv1.PodDisruptionBudget:
			m.pdbs[name] = o
		case *autoscalingv2.HorizontalPodAutoscaler:
			m.hpas[name] = o
		}
	}
	return nil
}

func stripComments(doc string) string {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{},
		secrets: map[string]*corev1.Secret{}, pdbs: map[string]*policyv1.PodDisruptionBudget{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{}}
	files, err := filepath.Glob("k8s/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("k8s/*/*.yaml")
	files = append(files, more...)
	if len(files) < 7 {
		t.Fatalf("found %d manifests under k8s/: %v", len(files), files)
	}
	for _, f := range files {
		if err := decodeFile(f, m); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// TestStrictDecodingRefusesMistakes: the decoder this test relies on
// refuses a misspelt field, a duplicate key and a wrong type.
func TestStrictDecodingRefusesMistakes(t *testing.T) {
	cases := map[string]string{
		"unknown field":  "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  selectr: {a: b}\n",
		"duplicate key":  "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nmetadata: {name: y}\n",
		"wrong type":     "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: {name: http}\n",
		"probe typo":     "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers:\n        - name: c\n          readinessProbe: {httpGet: {pth: /readyz, port: 1}}\n",
		"unknown kind":   "apiVersion: v1\nkind: Servic\nmetadata: {name: x}\n",
		"nameless thing": "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
	}
	for name, doc := range cases {
		p := filepath.Join(t.TempDir(), "x.yaml")
		os.WriteFile(p, []byte(doc), 0o644)
		m := &manifests{deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{},
			secrets: map[string]*corev1.Secret{}, pdbs: map[string]*policyv1.PodDisruptionBudget{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{}}
		if err := decodeFile(p, m); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// realDaemon starts the daemon of this checkout with the ConfigMap's
// configuration (store and plugins moved to scratch folders, loopback
// address) and returns its handler.
func realDaemon(t *testing.T, cfg daemon.Config) http.Handler {
	t.Helper()
	dir := t.TempDir()
	cfg.Store, cfg.PluginsDir, cfg.CacheDir = filepath.Join(dir, "store"), filepath.Join(dir, "plugins"), filepath.Join(dir, "cache")
	cfg.Addr, cfg.Preload = "127.0.0.1:0", nil
	d, err := daemon.New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d.Handler()
}

func get(t *testing.T, h http.Handler, path, token string) (int, string) {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestManifestsMatchTheDaemon(t *testing.T) {
	m := loadManifests(t)
	dep := m.deployments["refinersd"]
	if dep == nil {
		t.Fatal("no Deployment refinersd")
	}
	pod := dep.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]

	// The configuration: the daemon reads the ConfigMap's file strictly,
	// with the variables the pod gets from the Secret, and accepts it.
	cm := m.configMaps["refinersd"]
	if cm == nil || cm.Data["refinersd.yaml"] == "" {
		t.Fatal("no ConfigMap refinersd with refinersd.yaml")
	}
	var mount *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		for _, v := range pod.Spec.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Name {
				mount = &c.VolumeMounts[i]
			}
		}
	}
	if mount == nil {
		t.Fatal("the ConfigMap is not mounted")
	}
	if want := []string{"serve", "--config", mount.MountPath + "/refinersd.yaml"}; !slices.Equal(c.Args, want) {
		t.Errorf("args %v, want %v", c.Args, want)
	}
	cfgPath := filepath.Join(t.TempDir(), "refinersd.yaml")
	os.WriteFile(cfgPath, []byte(cm.Data["refinersd.yaml"]), 0o644)
	cfg := daemon.Defaults()
	if err := cfg.LoadFile(cfgPath); err != nil {
		t.Fatal(err)
	}
	podEnv := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.SecretRef == nil {
			continue
		}
		sec := m.secrets[ef.SecretRef.Name]
		if sec == nil {
			t.Fatalf("envFrom names Secret %q, which is not in k8s/", ef.SecretRef.Name)
		}
		for k, v := range sec.StringData {
			podEnv[k] = v
		}
	}
	for _, e := range c.Env {
		podEnv[e.Name] = e.Value
		if e.ValueFrom != nil {
			podEnv[e.Name] = "from-" + e.ValueFrom.FieldRef.FieldPath
		}
	}
	if podEnv["REFINERSD_TOKEN"] == "" {
		t.Error("no REFINERSD_TOKEN: a daemon off loopback refuses to start without one")
	}
	if err := cfg.LoadEnv(func(k string) string { return podEnv[k] }); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the daemon refuses the pod's configuration: %v", err)
	}
	if !strings.HasPrefix(cfg.Store, "s3://") || cfg.CacheDir == "" || cfg.CacheMaxBytes <= 0 || len(cfg.Preload) == 0 {
		t.Errorf("config: store %q, cache %q (%d bytes), preload %v: want a shared S3 store, a bounded cache, preloaded models", cfg.Store, cfg.CacheDir, cfg.CacheMaxBytes, cfg.Preload)
	}
	mounted := func(dir string) bool {
		for _, vm := range c.VolumeMounts {
			if strings.HasPrefix(dir+"/", strings.TrimSuffix(vm.MountPath, "/")+"/") && !vm.ReadOnly {
				return true
			}
		}
		return false
	}
	if !mounted(cfg.CacheDir) || !mounted("/tmp") {
		t.Errorf("cache_dir %s and /tmp must be writable volumes (the root file system is read-only)", cfg.CacheDir)
	}
	if g := dep.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || float64(*g) <= cfg.ShutdownTimeout.Seconds() {
		t.Errorf("terminationGracePeriodSeconds must exceed shutdown_timeout %v, or pods are killed mid-drain", cfg.ShutdownTimeout)
	}

	// Ports: the container port is the one the daemon listens on.
	_, port, _ := net.SplitHostPort(cfg.Addr)
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" || strconv.Itoa(int(c.Ports[0].ContainerPort)) != port {
		t.Errorf("container ports %+v; the daemon listens on %s", c.Ports, cfg.Addr)
	}
	for name, svc := range m.services {
		if !strings.HasPrefix(name, "refinersd") {
			continue
		}
		if !selects(svc.Spec.Selector, pod.Labels) {
			t.Errorf("Service %s selects %v, not the pods (%v)", name, svc.Spec.Selector, pod.Labels)
		}
		for _, p := range svc.Spec.Ports {
			if p.TargetPort != intstr.FromString("http") {
				t.Errorf("Service %s targets %v, not the container port http", name, p.TargetPort.String())
			}
		}
	}

	// Probes hit the daemon's real routes: liveness answers 200 at once,
	// readiness is /readyz (which gates on warm models and draining).
	h := realDaemon(t, cfg)
	probe := func(what string, p *corev1.Probe) string {
		if p == nil || p.HTTPGet == nil {
			t.Fatalf("%s probe: want an httpGet probe", what)
		}
		if p.HTTPGet.Port != intstr.FromString("http") {
			t.Errorf("%s probe port %v: want the container port http", what, p.HTTPGet.Port.String())
		}
		return p.HTTPGet.Path
	}
	if path := probe("liveness", c.LivenessProbe); path != "/healthz" {
		t.Errorf("liveness probe %s: want /healthz", path)
	} else if code, body := get(t, h, path, ""); code != 200 {
		t.Errorf("GET %s without a token: %d %s", path, code, body)
	}
	if path := probe("readiness", c.ReadinessProbe); path != "/readyz" {
		t.Errorf("readiness probe %s: want /readyz", path)
	} else if code, body := get(t, h, path, ""); code != 200 {
		t.Errorf("GET %s without a token: %d %s", path, code, body)
	}

	// The HPA scales the Deployment on a metric the daemon really serves.
	hpa := m.hpas["refinersd"]
	if hpa == nil {
		t.Fatal("no HorizontalPodAutoscaler refinersd")
	}
	if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != dep.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("HPA targets %+v", ref)
	}
	code, metrics := get(t, h, "/metrics", podEnv["REFINERSD_TOKEN"])
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	if len(hpa.Spec.Metrics) == 0 {
		t.Fatal("HPA without metrics")
	}
	for _, ms := range hpa.Spec.Metrics {
		if ms.Type != autoscalingv2.PodsMetricSourceType || ms.Pods == nil {
			t.Errorf("HPA metric %+v: want a Pods metric from the daemon", ms)
			continue
		}
		name := ms.Pods.Metric.Name
		if !regexp.MustCompile(`(?m)^# TYPE ` + regexp.QuoteMeta(name) + ` gauge$`).MatchString(metrics) {
			t.Errorf("HPA metric %s is not a gauge the daemon serves", name)
		}
	}
	if ann := pod.Annotations; ann["prometheus.io/port"] != port || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v: want port %s, path /metrics", ann, port)
	}

	// The disruption budget covers the pods and lets at least one go.
	pdb := m.pdbs["refinersd"]
	if pdb == nil || pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, pod.Labels) {
		t.Fatalf("PodDisruptionBudget refinersd does not select the pods: %+v", pdb)
	}
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() < 1 || int(*dep.Spec.Replicas) < 2 {
		t.Errorf("PDB maxUnavailable %v with %d replicas", pdb.Spec.MaxUnavailable, *dep.Spec.Replicas)
	}

	// The GPU variant asks for a GPU in the same container.
	gp := m.gpuPatch
	if gp == nil || gp.Name != dep.Name || len(gp.Spec.Template.Spec.Containers) != 1 || gp.Spec.Template.Spec.Containers[0].Name != c.Name {
		t.Fatalf("gpu/deployment-patch.yaml must patch Deployment %s's container %s", dep.Name, c.Name)
	}
	if q, ok := gp.Spec.Template.Spec.Containers[0].Resources.Limits["nvidia.com/gpu"]; !ok || q.Value() < 1 {
		t.Error("the GPU patch asks for no nvidia.com/gpu")
	}
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestHAProxyConfigsRouteOnTheDaemonsHeader: both HAProxy configurations
// (deploy/haproxy.cfg and the cluster's) hash on the header the daemon
// documents, consistently, check /readyz, retry on 503 and keep a job's
// follow-ups on its replica. (make scaleout runs the first for real.)
func TestHAProxyConfigsRouteOnTheDaemonsHeader(t *testing.T) {
	m := loadManifests(t)
	cm := m.configMaps["refinersd-haproxy"]
	if cm == nil {
		t.Fatal("no ConfigMap refinersd-haproxy")
	}
	local, err := os.ReadFile("haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]string{"deploy/haproxy.cfg": string(local), "k8s/haproxy.yaml": cm.Data["haproxy.cfg"]} {
		for _, want := range []string{
			"balance hdr(" + daemon.AdapterSetHeader + ")",
			"hash-type consistent",
			"option httpchk GET /readyz",
			"option redispatch",
			"stick match path,field(4,/) if { path_beg /v1/jobs/ }",
			"force-persist if { path_beg /v1/jobs/ }",
		} {
			if !strings.Contains(cfg, "\n    "+want) && !strings.Contains(cfg, "\n        "+want) {
				t.Errorf("%s lacks %q", name, want)
			}
		}
		if !regexp.MustCompile(`\n\s+retry-on [^\n]*\b503\b`).MatchString(cfg) || !regexp.MustCompile(`\n\s+retry-on [^\n]*\bconn-failure\b`).MatchString(cfg) {
			t.Errorf("%s does not retry on 503 and connection failures", name)
		}
	}
}
