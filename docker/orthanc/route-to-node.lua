-- Orthanc auto-routing to a unet-monai listening node (`unet-monai serve`, OPERATIONS.md).
--
-- Each series that is stable (no new instance for Orthanc's "StableAge" seconds) and is an image series
-- is sent by C-STORE to the DicomModalities entry "unet_monai_node"; the node sends its SEG back into
-- the same study. SEG and other non-image series (the node's own SEGs among them) are not routed, so a
-- SEG coming back never goes round again. Orthanc configuration:
--   "LuaScripts": [ "/etc/orthanc/route-to-node.lua" ],
--   "DicomModalities": { "unet_monai_node": [ "UNET_MONAI", "node-host", 11112 ] },
--   "StableAge": 60

local NODE = 'unet_monai_node'
local NOT_IMAGES = {
  SEG = true, SR = true, PR = true, KO = true, RTSTRUCT = true, RTPLAN = true, RTDOSE = true,
  REG = true, DOC = true,
}

function OnStableSeries(seriesId, tags, metadata)
  local modality = string.upper(tags['Modality'] or '')
  if NOT_IMAGES[modality] then
    print('unet-monai routing: series ' .. seriesId .. ' (' .. modality .. ') not routed')
    return
  end
  print('unet-monai routing: series ' .. seriesId .. ' (' .. modality .. ') sent to ' .. NODE)
  -- an Orthanc job: a failed send shows in /jobs and can be resubmitted (POST /jobs/<id>/resubmit)
  RestApiPost('/modalities/' .. NODE .. '/store', '{"Resources": ["' .. seriesId .. '"], "Synchronous": false}')
end
