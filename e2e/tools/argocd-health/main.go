// Command argocd-health runs an Argo CD resource health script the way Argo CD's application
// controller does (util/lua in argo-cd): in gopher-lua, Lua 5.1, with only the package, base,
// table and os libraries opened (a health override gets no string or math library unless it sets
// useOpenLibs), the object as the global `obj`, a one-second limit, and any status outside
// Argo CD's six health codes reported as Unknown. So a script that passes here behaves the same in
// Argo CD, which a stock Lua 5.4 cannot promise.
//
// Usage: argocd-health <script.lua>  < objects.jsonl
// Each stdin line is one JSON object; each stdout line is {"status":..,"message":..} or {"error":..}.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

type result struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

var healthCodes = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health <script.lua> < objects.jsonl")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		if err := out.Encode(health(string(script), in.Bytes())); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func health(script string, object []byte) result {
	var obj interface{}
	decoder := json.NewDecoder(bytes.NewReader(object))
	// Integers stay integers, as in the unstructured objects Argo CD hands to Lua.
	decoder.UseNumber()
	if err := decoder.Decode(&obj); err != nil {
		return result{Error: "object: " + err.Error()}
	}

	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, lua.OpenOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			return result{Error: "opening " + lib.name + ": " + err.Error()}
		}
	}
	// Argo CD's os is a safe subset: time and date only (no exit, getenv, remove...).
	safeOs := l.NewTable()
	for _, name := range []string{"time", "date"} {
		safeOs.RawSetString(name, l.GetField(l.GetGlobal(lua.OsLibName), name))
	}
	l.SetGlobal(lua.OsLibName, safeOs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return result{Error: err.Error()}
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return result{Error: "expect table output from Lua script, not " + l.Get(-1).Type().String()}
	}
	status := lua.LVAsString(table.RawGetString("status"))
	if !healthCodes[status] {
		return result{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return result{Status: status, Message: lua.LVAsString(table.RawGetString("message"))}
}

func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return lua.LNumber(i)
		}
		f, _ := v.Float64()
		return lua.LNumber(f)
	case []interface{}:
		table := l.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(l, item))
		}
		return table
	case map[string]interface{}:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(l, item))
		}
		return table
	}
	return lua.LNil
}
