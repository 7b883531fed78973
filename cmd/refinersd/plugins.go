package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/hashicorp/go-hclog"

	"github.com/refiners-go/refiners/hosts"
)

// defaultPluginsDir is $REFINERS_PLUGINS, else <user data dir>/refiners/plugins.
func defaultPluginsDir() string {
	if d := os.Getenv("REFINERS_PLUGINS"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "refiners", "plugins")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "refiners", "plugins")
	}
	return filepath.Join(home, ".local", "share", "refiners", "plugins")
}

func pluginsVerb(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("plugins: install PATH|DIR, list, remove NAME or check BINARY")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("plugins "+sub, flag.ContinueOnError)
	dir := fs.String("dir", defaultPluginsDir(), "plugins directory")
	verbose := fs.Bool("v", false, "log plugin activity to stderr")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	level := hclog.Warn
	if *verbose {
		level = hclog.Debug
	}
	h, err := hosts.New(*dir, hosts.Options{Logger: hclog.New(&hclog.LoggerOptions{Name: "refinersd", Level: level, Output: os.Stderr})})
	if err != nil {
		return err
	}
	defer h.Close()
	ctx := context.Background()
	switch sub {
	case "install":
		if len(pos) != 1 {
			return errors.New("plugins install: one PATH (a plugin binary, or a directory of them)")
		}
		paths, err := pluginBinaries(pos[0])
		if err != nil {
			return err
		}
		for _, p := range paths {
			e, err := h.Install(ctx, p)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "installed %s %s (protocol %d, sha256 %s)\n", e.Name, e.Version, e.Protocol, e.SHA256)
		}
		return nil
	case "list":
		entries, err := h.List()
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tVERSION\tPROTOCOL\tSHA256\tSTATUS")
		var bad []string
		for _, e := range entries {
			status := "ok"
			if err := h.Verify(e); err != nil {
				status = "REFUSED: " + err.Error()
				bad = append(bad, e.Name)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", e.Name, e.Version, e.Protocol, e.SHA256, status)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(bad) > 0 {
			return fmt.Errorf("plugins %v will not start: reinstall them (refinersd plugins install) if the change is intended", bad)
		}
		return nil
	case "remove":
		if len(pos) != 1 {
			return errors.New("plugins remove: one NAME")
		}
		return h.Remove(pos[0])
	case "check":
		if len(pos) != 1 {
			return errors.New("plugins check: one BINARY")
		}
		results, err := hosts.Check(ctx, pos[0])
		if err != nil {
			return err
		}
		failed := 0
		for _, r := range results {
			mark := "ok  "
			if !r.Passed {
				mark = "FAIL"
				failed++
			}
			fmt.Fprintf(out, "%s %s", mark, r.Name)
			if r.Detail != "" {
				fmt.Fprintf(out, ": %s", r.Detail)
			}
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "%d passed, %d failed\n", len(results)-failed, failed)
		if failed > 0 {
			return fmt.Errorf("plugin %s does not conform (%d checks failed)", pos[0], failed)
		}
		return nil
	}
	return fmt.Errorf("plugins: unknown subcommand %q (install, list, remove, check)", sub)
}

// pluginBinaries is path itself, or the executable files in directory path.
func pluginBinaries(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0 {
			out = append(out, filepath.Join(path, e.Name()))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no executable plugin binaries in %s", path)
	}
	return out, nil
}
