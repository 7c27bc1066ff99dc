/*
 * The runtime: generations (everything one manifest loads, and the slot holding the current
 * one), dispatch of an event to its handlers, durable mode's glue to the spool, TLS material,
 * and the monitor of stuck handler calls. The http folder and main.c use it through this
 * header (docs/development.md, "Layout").
 */
#ifndef WH_RUNTIME_H
#define WH_RUNTIME_H

#include "dispatch.h"
#include "durable.h"
#include "generation.h"
#include "stuck.h"
#include "tls_material.h"

#endif
