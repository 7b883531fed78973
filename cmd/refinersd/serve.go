package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/hashicorp/go-hclog"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/daemon"
	"github.com/refiners-go/refiners/store"
)

// defaultStoreDir is $REFINERSD_STORE, else <user data dir>/refiners/store.
func defaultStoreDir() string {
	if d := os.Getenv("REFINERSD_STORE"); d != "" {
		return d
	}
	return filepath.Join(filepath.Dir(defaultPluginsDir()), "store")
}

func serve(args []string, out io.Writer) error {
	cfg := daemon.Defaults()
	cfg.Store, cfg.PluginsDir = defaultStoreDir(), defaultPluginsDir()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(out)
	configFile := fs.String("config", "", "YAML configuration file (flags and REFINERSD_* variables override it)")
	var flagged daemon.Config
	fs.StringVar(&flagged.Addr, "addr", cfg.Addr, "listen address (a non-loopback address needs a token)")
	fs.StringVar(&flagged.Token, "token", "", "bearer token clients must send (prefer REFINERSD_TOKEN: flags show in ps)")
	fs.StringVar(&flagged.Store, "store", cfg.Store, "model store: a directory, or s3://bucket/prefix (AWS_* variables: docs/deploy.md)")
	fs.StringVar(&flagged.CacheDir, "cache-dir", "", "local blob cache of an s3:// store (default <user cache dir>/refiners-go/blobs)")
	fs.Int64Var(&flagged.CacheMaxBytes, "cache-max-bytes", 0, "bound of the blob cache in bytes, least recently used first out (0: no bound)")
	fs.StringVar(&flagged.Replica, "replica", "", "this replica's name, sent in X-Refiners-Replica (default: the host name)")
	preload := fs.String("preload", "", "comma-separated models to load at start and keep; /readyz fails until they are warm")
	fs.StringVar(&flagged.PluginsDir, "plugins-dir", cfg.PluginsDir, "installed plugins directory")
	fs.IntVar(&flagged.QueueSize, "queue-size", cfg.QueueSize, "jobs that may wait; more get 429")
	fs.Int64Var(&flagged.MaxBody, "max-body", cfg.MaxBody, "largest run request, in bytes (413 beyond)")
	fs.Int64Var(&flagged.MaxUpload, "max-upload", cfg.MaxUpload, "largest blob upload, in bytes")
	fs.IntVar(&flagged.MaxDecodes, "max-decodes", cfg.MaxDecodes, "run requests read and decoded at once (others wait)")
	fs.Int64Var(&flagged.MaxActivation, "max-activation", cfg.MaxActivation, "bytes of activation memory a run may need (estimated; 422 beyond; 0: no check)")
	fs.DurationVar(&flagged.KeepAlive, "keep-alive", cfg.KeepAlive, "unload a model idle this long (0: never)")
	fs.DurationVar(&flagged.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "time in-flight jobs get on SIGTERM")
	fs.DurationVar(&flagged.PluginTimeout, "plugin-timeout", cfg.PluginTimeout, "per plugin call")
	fs.DurationVar(&flagged.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "close a keep-alive connection idle this long")
	fs.DurationVar(&flagged.BodyTimeout, "body-timeout", cfg.BodyTimeout, "cut a request body that sends nothing for this long (408)")
	fs.IntVar(&flagged.GroupLimit, "group-limit", cfg.GroupLimit, "same-adapter jobs run in a row before older jobs get a turn")
	fs.StringVar(&flagged.LogLevel, "log-level", cfg.LogLevel, "trace, debug, info, warn or error")
	fs.BoolVar(&flagged.LogJSON, "log-json", false, "log JSON lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}
	if *configFile != "" {
		if err := cfg.LoadFile(*configFile); err != nil {
			return err
		}
	}
	if err := cfg.LoadEnv(os.Getenv); err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "addr":
			cfg.Addr = flagged.Addr
		case "token":
			cfg.Token = flagged.Token
		case "store":
			cfg.Store = flagged.Store
		case "cache-dir":
			cfg.CacheDir = flagged.CacheDir
		case "cache-max-bytes":
			cfg.CacheMaxBytes = flagged.CacheMaxBytes
		case "replica":
			cfg.Replica = flagged.Replica
		case "preload":
			cfg.Preload = strings.Split(*preload, ",")
		case "plugins-dir":
			cfg.PluginsDir = flagged.PluginsDir
		case "queue-size":
			cfg.QueueSize = flagged.QueueSize
		case "max-body":
			cfg.MaxBody = flagged.MaxBody
		case "max-upload":
			cfg.MaxUpload = flagged.MaxUpload
		case "max-decodes":
			cfg.MaxDecodes = flagged.MaxDecodes
		case "max-activation":
			cfg.MaxActivation = flagged.MaxActivation
		case "keep-alive":
			cfg.KeepAlive = flagged.KeepAlive
		case "shutdown-timeout":
			cfg.ShutdownTimeout = flagged.ShutdownTimeout
		case "plugin-timeout":
			cfg.PluginTimeout = flagged.PluginTimeout
		case "idle-timeout":
			cfg.IdleTimeout = flagged.IdleTimeout
		case "body-timeout":
			cfg.BodyTimeout = flagged.BodyTimeout
		case "group-limit":
			cfg.GroupLimit = flagged.GroupLimit
		case "log-level":
			cfg.LogLevel = flagged.LogLevel
		case "log-json":
			cfg.LogJSON = flagged.LogJSON
		}
	})
	level := hclog.LevelFromString(cfg.LogLevel)
	if level == hclog.NoLevel {
		return fmt.Errorf("log level %q: want trace, debug, info, warn or error", cfg.LogLevel)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "refinersd", Level: level, JSONFormat: cfg.LogJSON, Output: os.Stderr})
	d, err := daemon.New(cfg, log)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		d.Close()
		return err
	}
	fmt.Fprintf(out, "refinersd listening on http://%s\n", l.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return d.Serve(ctx, l)
}

// modelsVerb manages the model store.
func modelsVerb(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("models: add NAME --spec S --weights W, add NAME --from SRC, list, show NAME or rm NAME")
	}
	verb, args := args[0], args[1:]
	fs := flag.NewFlagSet("models "+verb, flag.ContinueOnError)
	fs.SetOutput(out)
	dir := fs.String("store", defaultStoreDir(), "model store: a directory, or s3://bucket/prefix")
	specPath := fs.String("spec", "", "spec file (its imports are stored with it)")
	weightsPath := fs.String("weights", "", "safetensors weights")
	prefix := fs.String("prefix", "", "key prefix of the model's tensors in the weights file")
	from := fs.String("from", "", "add: convert this source (diffusers folder, single-file checkpoint, PyTorch file) instead of --spec/--weights")
	co := convertFlags(fs)
	sets := setFlags{}
	fs.Var(sets, "set", "name=value: a spec parameter override (repeatable)")
	rest, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	st, err := store.Open(*dir)
	if err != nil {
		return err
	}
	needName := func() (string, error) {
		if len(rest) != 1 {
			return "", fmt.Errorf("models %s: want one NAME", verb)
		}
		return rest[0], nil
	}
	switch verb {
	case "add":
		name, err := needName()
		if err != nil {
			return err
		}
		if *from != "" {
			if *specPath != "" || *weightsPath != "" || *prefix != "" {
				return errors.New("models add: --from replaces --spec, --weights and --prefix")
			}
			return addFrom(st, name, *from, *co, sets, out)
		}
		if *specPath == "" || *weightsPath == "" {
			return errors.New("models add: --spec and --weights (or --from) are required")
		}
		m, err := st.AddModel(name, *specPath, *weightsPath, sets, *prefix)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "added model %s: spec %s (%d files), weights %s (%d bytes)\n", m.Name, m.Spec, len(m.SpecFiles), m.Weights.Digest, m.Weights.Size)
		return nil
	case "list":
		ms, err := st.Models()
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSPEC\tWEIGHTS\tSIZE")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", m.Name, m.Spec, m.Weights.Digest[:19], m.Weights.Size)
		}
		return tw.Flush()
	case "show":
		name, err := needName()
		if err != nil {
			return err
		}
		m, err := st.Model(name)
		if err != nil {
			return err
		}
		sp, err := st.LoadSpec(m)
		if err != nil {
			return err
		}
		c, err := sp.Build(m.Overrides)
		if err != nil {
			return err
		}
		params := core.CountParams(c)
		fmt.Fprintf(out, "model %s\n  spec: %s\n", m.Name, m.Spec)
		for rel, d := range m.SpecFiles {
			fmt.Fprintf(out, "    %s %s\n", d, rel)
		}
		fmt.Fprintf(out, "  weights: %s (%d bytes, from %s, prefix %q)\n  overrides: %v\n  parameters: %d\n\n%s\n",
			m.Weights.Digest, m.Weights.Size, m.Weights.Source, m.Prefix, m.Overrides, params, core.Tree(c, -1))
		return nil
	case "rm", "remove":
		name, err := needName()
		if err != nil {
			return err
		}
		if err := st.RemoveModel(name); err != nil {
			return err
		}
		fmt.Fprintf(out, "removed model %s\n", name)
		return nil
	}
	return fmt.Errorf("models: unknown verb %q (add, list, show, rm)", verb)
}

// adaptersVerb manages adapter files in the store.
func adaptersVerb(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("adapters: add NAME FILE, list or rm NAME")
	}
	verb, args := args[0], args[1:]
	fs := flag.NewFlagSet("adapters "+verb, flag.ContinueOnError)
	fs.SetOutput(out)
	dir := fs.String("store", defaultStoreDir(), "model store: a directory, or s3://bucket/prefix")
	rest, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	st, err := store.Open(*dir)
	if err != nil {
		return err
	}
	switch verb {
	case "add":
		if len(rest) != 2 {
			return errors.New("adapters add: want NAME FILE")
		}
		a, err := st.AddAdapter(rest[0], rest[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "added adapter %s: %s (%d bytes)\n", a.Name, a.File.Digest, a.File.Size)
		return nil
	case "list":
		as, err := st.Adapters()
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tDIGEST\tSIZE\tSOURCE")
		for _, a := range as {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", a.Name, a.File.Digest, a.File.Size, a.File.Source)
		}
		return tw.Flush()
	case "rm", "remove":
		if len(rest) != 1 {
			return errors.New("adapters rm: want NAME")
		}
		if err := st.RemoveAdapter(rest[0]); err != nil {
			return err
		}
		fmt.Fprintf(out, "removed adapter %s\n", rest[0])
		return nil
	}
	return fmt.Errorf("adapters: unknown verb %q (add, list, rm)", verb)
}
