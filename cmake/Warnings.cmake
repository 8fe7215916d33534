# Warning set of STYLE.md B10, applied per target. -Wconversion only where
# length arithmetic lives (src/ws), through wsh_strict_warnings().
set(WSH_WARNINGS
  -Wall -Wextra -Wpedantic -Wshadow -Wformat=2 -Wstrict-prototypes
  -Wmissing-prototypes -Wvla -Wimplicit-fallthrough -Wcast-qual
  -Wnull-dereference -Wdouble-promotion)

function(wsh_warnings target)
  target_compile_options(${target} PRIVATE ${WSH_WARNINGS})
  if(WSH_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

function(wsh_strict_warnings target)
  wsh_warnings(${target})
  target_compile_options(${target} PRIVATE -Wconversion -Wsign-conversion)
endfunction()
