// Package daemon is refinersd's server: warm models from the store, a
// bounded job queue per daemon, adapters applied per request on the warm
// base (grouped so that requests sharing adapters apply them once), and
// the HTTP API over it (docs/api.md).
package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/refiners-go/refiners/internal/names"
)

// Config is the daemon's configuration. Fields come from defaults, then a
// YAML file, then REFINERSD_* environment variables, then flags.
type Config struct {
	Addr            string        `yaml:"addr"`             // listen address; loopback by default
	Token           string        `yaml:"token"`            // bearer token; required off loopback
	Store           string        `yaml:"store"`            // model store: a directory, or s3://bucket/prefix (credentials and endpoint from AWS_* variables, store.S3Env)
	CacheDir        string        `yaml:"cache_dir"`        // local blob cache of an s3:// store (default <user cache dir>/refiners-go/blobs)
	CacheMaxBytes   int64         `yaml:"cache_max_bytes"`  // bound of that cache, least recently used blobs evicted first (0: no bound)
	Preload         []string      `yaml:"preload"`          // models loaded at start and kept (keep_alive does not apply); /readyz fails until they are warm
	Replica         string        `yaml:"replica"`          // this replica's name, sent in X-Refiners-Replica (default: the host name)
	PluginsDir      string        `yaml:"plugins_dir"`      // installed plugins
	QueueSize       int           `yaml:"queue_size"`       // queued jobs beyond which requests get 429
	MaxBody         int64         `yaml:"max_body"`         // bytes of a run request
	MaxUpload       int64         `yaml:"max_upload"`       // bytes of an uploaded blob
	MaxDecodes      int           `yaml:"max_decodes"`      // run requests read and decoded at once; others wait
	MaxActivation   int64         `yaml:"max_activation"`   // bytes of activation memory one run may need (estimated); 0: no check
	KeepAlive       time.Duration `yaml:"keep_alive"`       // idle time before a model is unloaded (0: never)
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"` // for in-flight jobs on SIGTERM
	JobTTL          time.Duration `yaml:"job_ttl"`          // how long finished jobs stay readable
	MaxJobs         int           `yaml:"max_jobs"`         // finished jobs kept at most
	GroupLimit      int           `yaml:"group_limit"`      // same-adapter jobs run in a row before older ones get a turn
	PluginTimeout   time.Duration `yaml:"plugin_timeout"`   // per plugin call
	IdleTimeout     time.Duration `yaml:"idle_timeout"`     // a keep-alive connection idle this long is closed
	BodyTimeout     time.Duration `yaml:"body_timeout"`     // a request body that sends nothing for this long is cut (408)
	LogLevel        string        `yaml:"log_level"`
	LogJSON         bool          `yaml:"log_json"`
	// Pipelines are the named SD 1.5 pipelines of the image endpoints.
	Pipelines map[string]PipelineConfig `yaml:"pipelines"`
	// Segmenters are the Segment Anything models of POST /v1/segment, by name (segment.go).
	Segmenters map[string]SegmenterConfig `yaml:"segmenters"`
}

// Defaults are the settings of a daemon with no configuration.
func Defaults() Config {
	return Config{
		Addr:            "127.0.0.1:8642",
		QueueSize:       64,
		MaxBody:         64 << 20,
		MaxUpload:       8 << 30,
		MaxDecodes:      2,
		MaxActivation:   physicalMemory() / 2,
		KeepAlive:       5 * time.Minute,
		ShutdownTimeout: 30 * time.Second,
		JobTTL:          10 * time.Minute,
		MaxJobs:         1000,
		GroupLimit:      16,
		PluginTimeout:   30 * time.Second,
		IdleTimeout:     60 * time.Second,
		BodyTimeout:     30 * time.Second,
		LogLevel:        "info",
	}
}

// LoadFile reads a YAML configuration file over c. Unknown keys are errors.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// LoadEnv reads REFINERSD_* variables over c.
func (c *Config) LoadEnv(getenv func(string) string) error {
	str := map[string]*string{"ADDR": &c.Addr, "TOKEN": &c.Token, "STORE": &c.Store, "PLUGINS_DIR": &c.PluginsDir, "LOG_LEVEL": &c.LogLevel,
		"CACHE_DIR": &c.CacheDir, "REPLICA": &c.Replica}
	for k, p := range str {
		if v := getenv("REFINERSD_" + k); v != "" {
			*p = v
		}
	}
	ints := map[string]*int{"QUEUE_SIZE": &c.QueueSize, "MAX_JOBS": &c.MaxJobs, "GROUP_LIMIT": &c.GroupLimit, "MAX_DECODES": &c.MaxDecodes}
	for k, p := range ints {
		if v := getenv("REFINERSD_" + k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("REFINERSD_%s: %w", k, err)
			}
			*p = n
		}
	}
	sizes := map[string]*int64{"MAX_BODY": &c.MaxBody, "MAX_UPLOAD": &c.MaxUpload, "MAX_ACTIVATION": &c.MaxActivation, "CACHE_MAX_BYTES": &c.CacheMaxBytes}
	for k, p := range sizes {
		if v := getenv("REFINERSD_" + k); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("REFINERSD_%s: %w", k, err)
			}
			*p = n
		}
	}
	durs := map[string]*time.Duration{"KEEP_ALIVE": &c.KeepAlive, "SHUTDOWN_TIMEOUT": &c.ShutdownTimeout, "JOB_TTL": &c.JobTTL,
		"PLUGIN_TIMEOUT": &c.PluginTimeout, "IDLE_TIMEOUT": &c.IdleTimeout, "BODY_TIMEOUT": &c.BodyTimeout}
	for k, p := range durs {
		if v := getenv("REFINERSD_" + k); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("REFINERSD_%s: %w", k, err)
			}
			*p = d
		}
	}
	if v := getenv("REFINERSD_PRELOAD"); v != "" {
		c.Preload = strings.Split(v, ",")
	}
	if v := getenv("REFINERSD_LOG_JSON"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("REFINERSD_LOG_JSON: %w", err)
		}
		c.LogJSON = b
	}
	return nil
}

// Validate checks the configuration, in particular that a daemon reachable
// from other machines cannot run without a token.
func (c *Config) Validate() error {
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return fmt.Errorf("addr %q: %w", c.Addr, err)
	}
	if !IsLoopback(host) && c.Token == "" {
		return fmt.Errorf("addr %s is not a loopback address: set a token (--token, REFINERSD_TOKEN or token: in the config file) so that clients must authenticate", c.Addr)
	}
	if c.Token != "" && len(c.Token) < 16 {
		return errors.New("token: use at least 16 characters")
	}
	switch {
	case c.Store == "":
		return errors.New("store: no store directory")
	case c.PluginsDir == "":
		return errors.New("plugins_dir: no plugins directory")
	case c.QueueSize < 1:
		return fmt.Errorf("queue_size %d: want at least 1", c.QueueSize)
	case c.MaxBody < 1024 || c.MaxUpload < 1024:
		return errors.New("max_body and max_upload: want at least 1024 bytes")
	case c.GroupLimit < 1:
		return fmt.Errorf("group_limit %d: want at least 1", c.GroupLimit)
	case c.MaxJobs < 1:
		return fmt.Errorf("max_jobs %d: want at least 1", c.MaxJobs)
	case c.MaxDecodes < 1:
		return fmt.Errorf("max_decodes %d: want at least 1", c.MaxDecodes)
	case c.MaxActivation < 0:
		return fmt.Errorf("max_activation %d: want a number of bytes, or 0 for no check", c.MaxActivation)
	case c.KeepAlive < 0:
		return fmt.Errorf("keep_alive %v: want 0 (never) or more", c.KeepAlive)
	case c.CacheMaxBytes < 0:
		return fmt.Errorf("cache_max_bytes %d: want a number of bytes, or 0 for no bound", c.CacheMaxBytes)
	}
	for _, m := range c.Preload {
		if err := names.Check("model", m); err != nil {
			return fmt.Errorf("preload: %w", err)
		}
	}
	if err := c.validateSegmenters(); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"shutdown_timeout", c.ShutdownTimeout}, {"job_ttl", c.JobTTL}, {"plugin_timeout", c.PluginTimeout},
		{"idle_timeout", c.IdleTimeout}, {"body_timeout", c.BodyTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("%s %v: want more than 0", d.name, d.v)
		}
	}
	for name, p := range c.Pipelines {
		p, err := p.withDefaults(name)
		if err != nil {
			return err
		}
		if p.Model == "" {
			if _, err := p.files(name); err != nil {
				return err
			}
		}
		c.Pipelines[name] = p
	}
	return nil
}

// physicalMemory is the machine's memory in bytes (MemTotal), or 8 GiB
// where it cannot be read.
func physicalMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err == nil && kb > 0 {
					return kb << 10
				}
			}
		}
	}
	return 8 << 30
}

// IsLoopback reports whether a listen host only accepts local connections.
// An empty host (all interfaces) is not loopback.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
