// What stock vcsim 0.24.2 lacks and the vSphere provider needs:
// HostNetworkSystem.UpdatePortGroup (MethodNotFound upstream). Each host's network system
// is wrapped (simulator.Map.Put with the same reference), so every other method is vcsim's.
package main

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type networkSystem struct {
	*simulator.HostNetworkSystem
}

func extend() {
	// Network systems are not entities (Map.All lists entities): reach them from the hosts.
	for _, obj := range simulator.Map.All("HostSystem") {
		h, ok := obj.(*simulator.HostSystem)
		if !ok || h.ConfigManager.NetworkSystem == nil {
			continue
		}
		if ns, ok := simulator.Map.Get(*h.ConfigManager.NetworkSystem).(*simulator.HostNetworkSystem); ok {
			simulator.Map.Put(&networkSystem{ns})
		}
	}
}

// The port group's vSwitch's policy (from the host's configuration), if any.
func vswitchPolicy(host *mo.HostSystem, vswitch string) *types.HostNetworkPolicy {
	if host == nil || host.Config == nil || host.Config.Network == nil {
		return nil
	}
	for _, v := range host.Config.Network.Vswitch {
		if v.Name == vswitch && v.Spec.Policy != nil {
			return v.Spec.Policy
		}
	}
	return nil
}

func pick(own, inherited *bool) *bool {
	if own != nil {
		return own
	}
	if inherited != nil {
		return inherited
	}
	return types.NewBool(false)
}

// computed is the port group's effective security policy: its own values, else its
// vSwitch's (as vCenter reports computedPolicy).
func computed(spec types.HostPortGroupSpec, sw *types.HostNetworkPolicy) types.HostNetworkPolicy {
	var own, in types.HostNetworkSecurityPolicy
	if spec.Policy.Security != nil {
		own = *spec.Policy.Security
	}
	if sw != nil && sw.Security != nil {
		in = *sw.Security
	}
	out := types.HostNetworkPolicy{}
	if sw != nil {
		out = *sw
	}
	out.Security = &types.HostNetworkSecurityPolicy{
		AllowPromiscuous: pick(own.AllowPromiscuous, in.AllowPromiscuous),
		MacChanges:       pick(own.MacChanges, in.MacChanges),
		ForgedTransmits:  pick(own.ForgedTransmits, in.ForgedTransmits),
	}
	return out
}

// UpdatePortGroup replaces the spec of the port group named PgName on this host only,
// recomputes its computedPolicy, and tells property collectors (networkInfo.portgroup of
// the network system, config.network.portgroup of the host). Unknown name: NotFound.
func (s *networkSystem) UpdatePortGroup(ctx *simulator.Context, req *types.UpdatePortGroup) soap.HasFault {
	body := &methods.UpdatePortGroupBody{}
	found := false
	for i := range s.NetworkInfo.Portgroup {
		pg := &s.NetworkInfo.Portgroup[i]
		if pg.Spec.Name != req.PgName {
			continue
		}
		pg.Spec = req.Portgrp
		pg.ComputedPolicy = computed(req.Portgrp, vswitchPolicy(s.Host, req.Portgrp.VswitchName))
		found = true
		if s.Host != nil && s.Host.Config != nil && s.Host.Config.Network != nil {
			for j := range s.Host.Config.Network.Portgroup {
				if s.Host.Config.Network.Portgroup[j].Spec.Name == req.PgName {
					s.Host.Config.Network.Portgroup[j] = *pg
				}
			}
		}
	}
	if !found {
		body.Fault_ = simulator.Fault("", &types.NotFound{})
		return body
	}
	ctx.Map.Update(s, []types.PropertyChange{{Name: "networkInfo.portgroup", Val: s.NetworkInfo.Portgroup}})
	if s.Host != nil {
		if h := ctx.Map.Get(s.Host.Reference()); h != nil {
			ctx.Map.Update(h, []types.PropertyChange{{Name: "config.network.portgroup", Val: s.Host.Config.Network.Portgroup}})
		}
	}
	body.Res = &types.UpdatePortGroupResponse{}
	return body
}

// Get hands the property collector the wrapped object (it reads the embedded mo type of
// the first field, which here is a pointer).
func (s *networkSystem) Get() mo.Reference {
	return s.HostNetworkSystem
}
