// Command tiltfile runs a Tiltfile under Starlark (go.starlark.net, the
// interpreter Tilt itself uses) with recording stand-ins for Tilt's
// builtins, and prints every call as JSON. There is no cluster or Tilt on
// CI machines; this lets charts/test/devcluster.test.ts check that the
// Tiltfile parses, runs, and names the same images, charts, values files,
// workloads and ports as the chart and the Dockerfiles.
//
//	go run . ../../../Tiltfile
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

type call struct {
	Fn     string                 `json:"fn"`
	Args   []interface{}          `json:"args"`
	Kwargs map[string]interface{} `json:"kwargs"`
}

var calls []call

func toJSON(v starlark.Value) interface{} {
	switch x := v.(type) {
	case starlark.NoneType:
		return nil
	case starlark.Bool:
		return bool(x)
	case starlark.Int:
		i, _ := x.Int64()
		return i
	case starlark.Float:
		return float64(x)
	case starlark.String:
		return string(x)
	case *starlark.List:
		out := make([]interface{}, 0, x.Len())
		for i := 0; i < x.Len(); i++ {
			out = append(out, toJSON(x.Index(i)))
		}
		return out
	case starlark.Tuple:
		out := make([]interface{}, 0, len(x))
		for _, item := range x {
			out = append(out, toJSON(item))
		}
		return out
	case *starlark.Dict:
		out := map[string]interface{}{}
		for _, item := range x.Items() {
			out[fmt.Sprint(toJSON(item[0]))] = toJSON(item[1])
		}
		return out
	default:
		return v.String()
	}
}

// recorder is a builtin that records its call and returns a dict describing it,
// so values built by one builtin (sync, helm, port_forward…) show up where they are passed.
func recorder(name string, returns bool) *starlark.Builtin {
	return starlark.NewBuiltin(name, func(_ *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
		c := call{Fn: name, Args: []interface{}{}, Kwargs: map[string]interface{}{}}
		for _, a := range args {
			c.Args = append(c.Args, toJSON(a))
		}
		for _, kv := range kwargs {
			c.Kwargs[string(kv[0].(starlark.String))] = toJSON(kv[1])
		}
		if !returns {
			calls = append(calls, c)
			return starlark.None, nil
		}
		d := starlark.NewDict(3)
		_ = d.SetKey(starlark.String("fn"), starlark.String(name))
		argList := starlark.NewList(nil)
		for _, a := range args {
			_ = argList.Append(a)
		}
		_ = d.SetKey(starlark.String("args"), argList)
		kw := starlark.NewDict(len(kwargs))
		for _, kv := range kwargs {
			_ = kw.SetKey(kv[0], kv[1])
		}
		_ = d.SetKey(starlark.String("kwargs"), kw)
		return d, nil
	})
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tiltfile <path to Tiltfile>")
		os.Exit(2)
	}
	predeclared := starlark.StringDict{
		"TRIGGER_MODE_AUTO":   starlark.String("TRIGGER_MODE_AUTO"),
		"TRIGGER_MODE_MANUAL": starlark.String("TRIGGER_MODE_MANUAL"),
	}
	// Tilt's builtins that configure the session (recorded, return nothing).
	for _, name := range []string{"allow_k8s_contexts", "update_settings", "k8s_yaml", "k8s_resource", "local_resource", "docker_build", "custom_build", "watch_file"} {
		predeclared[name] = recorder(name, false)
	}
	// Tilt's builtins that build values passed to the others.
	for _, name := range []string{"sync", "run", "fall_back_on", "helm", "port_forward", "link"} {
		predeclared[name] = recorder(name, true)
	}
	thread := &starlark.Thread{Name: "Tiltfile", Print: func(_ *starlark.Thread, msg string) { fmt.Fprintln(os.Stderr, msg) }}
	options := &syntax.FileOptions{Set: true, While: false, TopLevelControl: true, GlobalReassign: true}
	globals, err := starlark.ExecFileOptions(options, thread, os.Args[1], nil, predeclared)
	if err != nil {
		if evalErr, ok := err.(*starlark.EvalError); ok {
			fmt.Fprintln(os.Stderr, evalErr.Backtrace())
		} else {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	}
	names := make([]string, 0, len(globals))
	for name := range globals {
		names = append(names, name)
	}
	sort.Strings(names)
	out := map[string]interface{}{"calls": calls, "globals": map[string]interface{}{}}
	for _, name := range names {
		out["globals"].(map[string]interface{})[name] = toJSON(globals[name])
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
