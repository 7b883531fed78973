package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// control is one --control [PREPROCESS:]FILE:COND[:OPTIONS] flag.
type control struct {
	preprocess, file, condition string
	plugin                      string
	scale, start, end           float64
	low, high                   float64
	params                      map[string]any // options for the plugin
}

type controlFlags []control

func (c *controlFlags) String() string { return fmt.Sprint(*c) }

const controlSyntax = "[canny:]FILE:COND.png[:scale=S,start=F,end=F,low=T,high=T,plugin=NAME,KEY=VALUE...]"

// Set parses one --control flag: an optional preprocessor ("canny"), the
// ControlNet file, the condition image, and comma-separated options:
// scale, start, end (fractions of the steps), low and high (canny's
// thresholds), plugin (default controlnet); any other KEY=VALUE goes to
// the plugin's parameters (numbers as numbers), e.g. name=edges.
func (c *controlFlags) Set(v string) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("--control %q: %s (want %s)", v, fmt.Sprintf(format, args...), controlSyntax)
	}
	parts := strings.Split(v, ":")
	ctl := control{plugin: "controlnet", params: map[string]any{}}
	if parts[0] == pipeline.ControlPreprocessCanny {
		ctl.preprocess, parts = parts[0], parts[1:]
	}
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return bad("want a ControlNet file and a condition image")
	}
	ctl.file, ctl.condition = parts[0], parts[1]
	lowSet, highSet := false, false
	if len(parts) == 3 {
		for _, opt := range strings.Split(parts[2], ",") {
			k, val, ok := strings.Cut(opt, "=")
			if !ok || k == "" || val == "" {
				return bad("option %q is not KEY=VALUE", opt)
			}
			num := func(dst *float64) error {
				f, err := strconv.ParseFloat(val, 64)
				if err != nil {
					return bad("%s=%s is not a number", k, val)
				}
				*dst = f
				return nil
			}
			var err error
			switch k {
			case "scale":
				err = num(&ctl.scale)
				if err == nil && ctl.scale <= 0 {
					err = bad("scale %s: want a positive scale", val)
				}
			case "start":
				err = num(&ctl.start)
			case "end":
				err = num(&ctl.end)
				if err == nil && ctl.end == 0 {
					err = bad("end 0: want a fraction in (start, 1]")
				}
			case "low", "high":
				if ctl.preprocess == "" {
					return bad("%s is canny's threshold: write canny:FILE:COND:...", k)
				}
				if k == "low" {
					err, lowSet = num(&ctl.low), true
				} else {
					err, highSet = num(&ctl.high), true
				}
			case "plugin":
				ctl.plugin = val
			default:
				if _, dup := ctl.params[k]; dup {
					return bad("option %s given twice", k)
				}
				if n, err := strconv.ParseFloat(val, 64); err == nil {
					ctl.params[k] = n
				} else {
					ctl.params[k] = val
				}
			}
			if err != nil {
				return err
			}
		}
	}
	// One threshold given: the other is its default.
	if ctl.preprocess != "" && lowSet != highSet {
		if !lowSet {
			ctl.low = pipeline.DefaultCannyLow
		} else {
			ctl.high = pipeline.DefaultCannyHigh
		}
	}
	*c = append(*c, ctl)
	return nil
}

// request is the pipeline's Control for the flag, with its condition image.
func (c control) request(cond *pipeline.RGB) (pipeline.Control, error) {
	params := ""
	if len(c.params) > 0 {
		b, err := json.Marshal(c.params)
		if err != nil {
			return pipeline.Control{}, err
		}
		params = string(b)
	}
	return pipeline.Control{Plugin: c.plugin, File: c.file, Params: params, Condition: cond, Preprocess: c.preprocess,
		CannyLow: c.low, CannyHigh: c.high, Scale: c.scale, Start: c.start, End: c.end}, nil
}
